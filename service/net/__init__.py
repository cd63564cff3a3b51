"""Reaching other hosts safely: the guard against server-side request forgery (`guard`)
and the guarded fetch with its size and time limits (`fetch`), shared by source images,
provider answers that carry a URL, and webhooks."""
