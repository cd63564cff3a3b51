"""Signed, expiring URLs for stored images: the signature is the capability."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import quote

from service.errors import PermissionDenied


class UrlSigner:
    def __init__(self, secret: bytes, public_base: str, ttl_seconds: int) -> None:
        self._secret = secret
        self._base = public_base.rstrip("/")
        self._ttl = ttl_seconds

    def _signature(self, name: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"{name}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def url(self, name: str, now: float | None = None) -> str:
        """The public URL of `name`, valid for the TTL from `now`."""
        expires = int(now if now is not None else time.time()) + self._ttl
        return (f"{self._base}/api/images/files/{quote(name)}"
                f"?expires={expires}&signature={self._signature(name, expires)}")

    def verify(self, name: str, expires: int, signature: str, now: float | None = None) -> None:
        """Raise PermissionDenied unless the signature is ours and has not expired."""
        expected = self._signature(name, expires)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise PermissionDenied("this image URL is not valid (bad signature)",
                                   param="signature", reason="INVALID_SIGNATURE")
        if (now if now is not None else time.time()) >= expires:
            raise PermissionDenied("this image URL has expired; generate the image again",
                                   param="expires", reason="URL_EXPIRED")
