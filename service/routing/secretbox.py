"""Provider secrets encrypted at rest: Fernet (AES-128-CBC with HMAC-SHA256), keyed from
AIGNE_HUB_CREDENTIALS_KEY. Several comma-separated keys rotate: the first encrypts, every one
decrypts, so old rows stay readable until `python -m service deployments reseal` rewrites them."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from service.errors import Internal


class SecretBox:
    def __init__(self, keys: str) -> None:
        secrets = [k.strip() for k in keys.split(",") if k.strip()]
        if not secrets:
            raise ValueError("the credentials key is empty")
        self._fernet = MultiFernet([Fernet(_fernet_key(s)) for s in secrets])

    def seal(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def open(self, sealed: bytes) -> str:
        try:
            return self._fernet.decrypt(sealed).decode()
        except InvalidToken:
            raise Internal("a stored credential cannot be decrypted with the configured "
                           "AIGNE_HUB_CREDENTIALS_KEY") from None

    def reseal(self, sealed: bytes) -> bytes:
        """`sealed` encrypted again with the first key (after a rotation)."""
        return self._fernet.rotate(sealed)


def _fernet_key(secret: str) -> bytes:
    """A Fernet key from any long random string (Fernet wants 32 bytes, base64)."""
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())
