"""API keys: long random tokens, stored as HMAC-SHA256 digests and found by digest.

A key is shown once, when it is made; afterwards only its id and prefix. A keyed digest (not
a password hash) is right for random tokens: one HMAC per request instead of 50-300 ms of
bcrypt, and a stolen table is useless without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from service.db import ApiKeyRow, utcnow
from service.errors import NotFound, PermissionDenied, Unauthenticated

TOKEN_PREFIX = "ahk-"  # noqa: S105 - a marker, not a secret
SHOWN_PREFIX_LENGTH = 12


@dataclass(frozen=True)
class ApiKey:
    """A key as the rest of the service sees it: never its secret, never its digest."""

    id: str
    name: str
    prefix: str
    admin: bool
    source: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKeyRow) -> ApiKey:
        return cls(row.id, row.name, row.prefix, row.admin, row.source, row.created_at,
                   row.revoked_at)


class KeyStore:
    def __init__(self, sessions: async_sessionmaker, secret: bytes) -> None:  # type: ignore[type-arg]
        self._sessions = sessions
        self._secret = secret

    def digest(self, token: str) -> bytes:
        return hmac.new(self._secret, token.encode(), hashlib.sha256).digest()

    async def create(self, name: str, *, admin: bool = False, source: str = "cli"
                     ) -> tuple[ApiKey, str]:
        """A new key and its secret, which is not kept and cannot be shown again."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        return await self._insert(token, name, admin=admin, source=source), token

    async def ensure(self, token: str, name: str, *, admin: bool, source: str) -> ApiKey:
        """The key for `token`, made if it is new (keys given in configuration)."""
        digest = self.digest(token)
        async with self._sessions() as session:
            row = await session.scalar(select(ApiKeyRow).where(ApiKeyRow.digest == digest))
            if row is not None:
                return ApiKey.of(row)
        try:
            return await self._insert(token, name, admin=admin, source=source)
        except IntegrityError:  # another process made it at the same moment
            return await self.ensure(token, name, admin=admin, source=source)

    async def _insert(self, token: str, name: str, *, admin: bool, source: str) -> ApiKey:
        row = ApiKeyRow(id="key_" + secrets.token_hex(8), name=name,
                        prefix=token[:SHOWN_PREFIX_LENGTH], digest=self.digest(token),
                        admin=admin, source=source, created_at=utcnow())
        async with self._sessions() as session, session.begin():
            session.add(row)
        return ApiKey.of(row)

    async def list(self) -> list[ApiKey]:
        async with self._sessions() as session:
            rows = await session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))
            return [ApiKey.of(row) for row in rows]

    async def count_usable(self) -> int:
        async with self._sessions() as session:
            count = await session.scalar(
                select(func.count()).select_from(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None)))
            return int(count or 0)

    async def revoke(self, id_or_prefix: str) -> ApiKey:
        """Revoke by id or by shown prefix; takes effect on the key's next request."""
        async with self._sessions() as session, session.begin():
            rows = (await session.scalars(select(ApiKeyRow).where(
                or_(ApiKeyRow.id == id_or_prefix, ApiKeyRow.prefix == id_or_prefix)))).all()
            if len(rows) != 1:
                raise NotFound(f"no single key matches '{id_or_prefix}'", param="id",
                               reason="KEY_NOT_FOUND")
            row = rows[0]
            if row.revoked_at is None:
                await session.execute(update(ApiKeyRow).where(ApiKeyRow.id == row.id)
                                      .values(revoked_at=utcnow()))
                await session.refresh(row)
            return ApiKey.of(row)

    async def authenticate(self, authorization: str | None) -> ApiKey:
        """The key an `Authorization: Bearer <key>` value names, or the error to answer."""
        token = _bearer_token(authorization)
        async with self._sessions() as session:
            row = await session.scalar(
                select(ApiKeyRow).where(ApiKeyRow.digest == self.digest(token)))
        if row is None:
            raise Unauthenticated("Incorrect API key provided.")
        if row.revoked_at is not None:
            raise PermissionDenied("This API key has been revoked.", reason="KEY_REVOKED")
        return ApiKey.of(row)


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            reason="MISSING_API_KEY")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("The Authorization header must be 'Bearer <key>'.",
                              reason="MISSING_API_KEY")
    return token
