"""Webhooks: a signed POST to the URL a job was given, when the job ends.

Signed the Standard Webhooks way (https://www.standardwebhooks.com), which Svix, and
libraries in most languages (`pip install standardwebhooks`), verify:

    webhook-id:        msg_<job id>   the same on every retry of one job's message
    webhook-timestamp: <UNIX seconds> when this attempt was signed
    webhook-signature: v1,<base64 of HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>

The secret is per API key, `whsec_<base64>` (CreateJob answers it): derived from the
server's AIGNE_HUB_WEBHOOK_SECRET and the key's id, so replicas sharing that secret sign
alike and no key can forge another key's webhooks. A receiver recomputes the signature
over the raw body, compares in constant time, and refuses timestamps more than 5 minutes
away from its clock (replays).

Webhook URLs pass the guard image URLs pass (service/net/guard.py): the host is resolved and
refused if any address is not public, unless it is on AIGNE_HUB_WEBHOOK_URL_ALLOWLIST; the
POST goes to the address that was checked; redirects are not followed (3xx is a failure).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import httpx

from service.errors import InvalidArgument
from service.net.guard import UrlRefused, checked_address, pinned

MAX_URL_LENGTH = 2048
SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks marker, not a secret
USER_AGENT = "AIGNE-Hub-Webhooks/1"


class Webhooks:
    def __init__(self, secret: bytes, allowed_hosts: frozenset[str], timeout: float) -> None:
        self._secret = secret
        self._allowed = allowed_hosts
        self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=timeout)

    def secret_for(self, key_id: str) -> str:
        """The webhook secret of one API key, in the Standard Webhooks form."""
        return SECRET_PREFIX + base64.b64encode(self._key_secret(key_id)).decode("ascii")

    def _key_secret(self, key_id: str) -> bytes:
        return hmac.new(self._secret, f"webhook-secret\n{key_id}".encode(),
                        hashlib.sha256).digest()

    def signature(self, key_id: str, message_id: str, timestamp: int, body: bytes) -> str:
        signed = f"{message_id}.{timestamp}.".encode() + body
        mac = hmac.new(self._key_secret(key_id), signed, hashlib.sha256).digest()
        return "v1," + base64.b64encode(mac).decode("ascii")

    async def check(self, url: str) -> None:
        """Refuse, as INVALID_ARGUMENT naming `webhook_url`, a URL no webhook could reach."""
        if len(url) > MAX_URL_LENGTH:
            raise InvalidArgument(f"webhook_url must be at most {MAX_URL_LENGTH} characters",
                                  param="webhook_url", reason="INVALID_WEBHOOK_URL")
        if not url.lower().startswith(("http://", "https://")):
            raise InvalidArgument("webhook_url must be an http or https URL",
                                  param="webhook_url", reason="INVALID_WEBHOOK_URL")
        try:
            await checked_address(url, self._allowed)
        except UrlRefused as refused:
            reason = ("WEBHOOK_URL_FORBIDDEN" if refused.reason == "IMAGE_URL_FORBIDDEN"
                      else "INVALID_WEBHOOK_URL")
            raise InvalidArgument(f"webhook_url: {refused.message}", param="webhook_url",
                                  reason=reason) from None

    async def deliver(self, url: str, key_id: str, message_id: str, body: bytes) -> str | None:
        """POST `body` to `url`, signed; None when the receiver took it (2xx), else why not."""
        try:
            address = await checked_address(url, self._allowed)
        except UrlRefused as refused:
            return f"refused: {refused.message}"
        target, headers, extensions = pinned(url, address)
        timestamp = int(time.time())
        headers.update({
            "content-type": "application/json", "user-agent": USER_AGENT,
            "webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": self.signature(key_id, message_id, timestamp, body)})
        try:
            answer = await self._http.post(target, content=body, headers=headers,
                                           extensions=extensions)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return f"{type(exc).__name__}"
        if 200 <= answer.status_code < 300:
            return None
        return f"HTTP {answer.status_code}"

    async def aclose(self) -> None:
        await self._http.aclose()
