"""`make bench`: what our doors cost over a provider that answers at once, against the
floor of this architecture and against LiteLLM's proxy. See docs/performance.md."""
