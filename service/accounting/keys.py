"""API keys: long random tokens, stored as HMAC-SHA256 digests and found by digest.

A key is shown once, when it is made; afterwards only its id and prefix. A keyed digest (not
a password hash) is right for random tokens: one HMAC per request instead of 50-300 ms of
bcrypt, and a stolen table is useless without the secret.

Each key may carry limits (allowed models, daily and monthly image quotas, requests per
minute, an expiry). Every request reads its key afresh, so revocation, expiry and new
limits take effect on the key's next request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Container, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import orjson
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.db import ApiKeyRow, Database, KeyGenerationRow, rows_changed, utcnow
from service.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated

TOKEN_PREFIX = "ahk-"  # noqa: S105 - a marker, not a secret
SHOWN_PREFIX_LENGTH = 12
T = TypeVar("T")
MAX_NAME_LENGTH = 200
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class KeyLimits:
    """What a key may do. None: the limit does not apply."""

    allowed_models: tuple[str, ...] | None = None
    daily_image_quota: int | None = None
    monthly_image_quota: int | None = None
    requests_per_minute: int | None = None
    expires_at: datetime | None = None

    def checked(self, known_models: Container[str], param: str = "limits") -> KeyLimits:
        """These limits, or InvalidArgument naming the field that makes no sense."""
        for name in ("daily_image_quota", "monthly_image_quota", "requests_per_minute"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidArgument(f"{name} must be a positive number (or unset for none)",
                                      param=f"{param}.{name}", reason="INTEGER_BELOW_MIN_VALUE")
        for model in self.allowed_models or ():
            if model not in known_models:
                raise InvalidArgument(f"allowed_models names '{model}', which is not a model "
                                      "here; GET /api/models lists them",
                                      param=f"{param}.allowed_models")
        return self


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
    limits: KeyLimits = field(default_factory=KeyLimits)

    @classmethod
    def of(cls, row: ApiKeyRow) -> ApiKey:
        limits = KeyLimits(
            allowed_models=tuple(row.allowed_models) if row.allowed_models is not None else None,
            daily_image_quota=row.daily_image_quota,
            monthly_image_quota=row.monthly_image_quota,
            requests_per_minute=row.requests_per_minute,
            expires_at=row.expires_at,
        )
        return cls(row.id, row.name, row.prefix, row.admin, row.source, row.created_at,
                   row.revoked_at, limits)

    def check_model(self, model: str) -> None:
        """Refuse a model that is not in the key's allow-list (403 model_not_allowed)."""
        allowed = self.limits.allowed_models
        if allowed is not None and model not in allowed:
            raise PermissionDenied(f"This API key may not use the model '{model}'.",
                                   param="model", reason="MODEL_NOT_ALLOWED")


class KeyStore:
    def __init__(self, database: Database, secret: bytes) -> None:
        self._db = database
        self._listeners: list[Callable[[], None]] = []  # told of this process's key changes
        self._secret = secret

    def listen(self, changed: Callable[[], None]) -> None:
        """Call `changed` after each change this process makes to the keys (a cache forgets
        at once; other processes' changes it learns from key_generation)."""
        self._listeners.append(changed)

    async def _changing(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        try:
            return await self._db.write(work)
        finally:
            for changed in self._listeners:
                changed()

    def digest(self, token: str) -> bytes:
        return hmac.new(self._secret, token.encode(), hashlib.sha256).digest()

    async def create(self, name: str, *, admin: bool = False, source: str = "cli",
                     limits: KeyLimits | None = None) -> tuple[ApiKey, str]:
        """A new key and its secret, which is not kept and cannot be shown again."""
        if not 1 <= len(name.strip()) <= MAX_NAME_LENGTH:
            raise InvalidArgument(f"name must be 1 to {MAX_NAME_LENGTH} characters",
                                  param="name")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = await self._insert(token, name.strip(), admin=admin, source=source,
                                 limits=limits or KeyLimits())
        return key, token

    async def ensure(self, token: str, name: str, *, admin: bool, source: str) -> ApiKey:
        """The key for `token`, made if it is new (keys given in configuration). Its admin
        flag follows the configuration; a revoked key stays revoked."""
        digest = self.digest(token)

        async def follow(session: AsyncSession) -> ApiKey | None:
            row = await session.scalar(select(ApiKeyRow).where(ApiKeyRow.digest == digest))
            if row is None:
                return None
            if row.admin != admin:
                row.admin = admin
                await _changed(session)
            return ApiKey.of(row)

        known = await self._changing(follow)
        if known is not None:
            return known
        try:
            return await self._insert(token, name, admin=admin, source=source,
                                      limits=KeyLimits())
        except IntegrityError:  # another process made it at the same moment
            return await self.ensure(token, name, admin=admin, source=source)

    async def _insert(self, token: str, name: str, *, admin: bool, source: str,
                      limits: KeyLimits) -> ApiKey:
        row = ApiKeyRow(id="key_" + secrets.token_hex(8), name=name,
                        prefix=token[:SHOWN_PREFIX_LENGTH], digest=self.digest(token),
                        admin=admin, source=source, created_at=utcnow(), **_columns(limits))

        async def add(session: AsyncSession) -> None:
            session.add(row)
            await _changed(session)

        await self._changing(add)
        return ApiKey.of(row)

    async def list(self, page_size: int = MAX_PAGE_SIZE, page_token: str = ""
                   ) -> tuple[list[ApiKey], str]:
        """A page of keys, oldest first, and the token of the next page ("" at the end)."""
        page_size = min(max(page_size, 1), MAX_PAGE_SIZE)
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
        if page_token:
            after_time, after_id = _decode_token(page_token)
            query = query.where(or_(ApiKeyRow.created_at > after_time, and_(
                ApiKeyRow.created_at == after_time, ApiKeyRow.id > after_id)))
        async with self._db.read() as session:
            rows = list(await session.scalars(query.limit(page_size + 1)))
        keys = [ApiKey.of(row) for row in rows[:page_size]]
        more = len(rows) > page_size
        return keys, _encode_token(keys[-1]) if more else ""

    async def get(self, id_or_prefix: str) -> ApiKey:
        async with self._db.read() as session:
            return ApiKey.of(await _find(session, id_or_prefix))

    async def count_usable(self) -> int:
        async with self._db.read() as session:
            count = await session.scalar(
                select(func.count()).select_from(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None)))
            return int(count or 0)

    async def set_limits(self, id_or_prefix: str, limits: KeyLimits) -> ApiKey:
        """Replace all limits of a key; they apply from its next request."""
        async def set_them(session: AsyncSession) -> ApiKey:
            row = await _find(session, id_or_prefix)
            await session.execute(update(ApiKeyRow).where(ApiKeyRow.id == row.id)
                                  .values(**_columns(limits)))
            await _changed(session)
            await session.refresh(row)
            return ApiKey.of(row)

        return await self._changing(set_them)

    async def revoke_unconfigured(self, configured: Sequence[str]) -> int:
        """Revoke the keys of source "env" other than `configured` (ids): a key taken out of
        AIGNE_HUB_API_KEYS stops working. How many were revoked."""
        unconfigured = (ApiKeyRow.source == "env", ApiKeyRow.revoked_at.is_(None),
                        ApiKeyRow.id.not_in(configured))
        async with self._db.read() as session:  # most starts revoke nothing: write nothing
            if await session.scalar(select(ApiKeyRow.id).where(*unconfigured).limit(1)) is None:
                return 0

        async def revoke_them(session: AsyncSession) -> int:
            revoked = await session.execute(
                update(ApiKeyRow).where(*unconfigured).values(revoked_at=utcnow()))
            count = rows_changed(revoked)
            if count:
                await _changed(session)
            return count

        return await self._db.write(revoke_them)

    async def revoke(self, id_or_prefix: str) -> ApiKey:
        """Revoke by id or by shown prefix; takes effect on the key's next request."""
        async def revoke_it(session: AsyncSession) -> ApiKey:
            row = await _find(session, id_or_prefix)
            if row.revoked_at is None:
                await session.execute(update(ApiKeyRow).where(ApiKeyRow.id == row.id)
                                      .values(revoked_at=utcnow()))
                await _changed(session)
                await session.refresh(row)
            return ApiKey.of(row)

        return await self._changing(revoke_it)

    async def authenticate(self, authorization: str | None) -> ApiKey:
        """The key an `Authorization: Bearer <key>` value names, or the error to answer."""
        token = _bearer_token(authorization)
        async with self._db.read() as session:
            row = await session.scalar(
                select(ApiKeyRow).where(ApiKeyRow.digest == self.digest(token)))
        if row is None:
            raise Unauthenticated("Incorrect API key provided.")
        if row.revoked_at is not None:
            raise PermissionDenied("This API key has been revoked.", reason="KEY_REVOKED")
        key = ApiKey.of(row)
        if key.limits.expires_at is not None and key.limits.expires_at <= utcnow():
            raise PermissionDenied("This API key has expired.", reason="KEY_EXPIRED")
        return key


async def _changed(session) -> None:  # type: ignore[no-untyped-def]
    """Count a change to the keys, in the changing transaction: caches of keys (KeyCache)
    compare this number, not the whole table."""
    await session.execute(update(KeyGenerationRow).where(KeyGenerationRow.id == 1)
                          .values(n=KeyGenerationRow.n + 1))


async def _find(session, id_or_prefix: str) -> ApiKeyRow:  # type: ignore[no-untyped-def]
    rows = (await session.scalars(select(ApiKeyRow).where(
        or_(ApiKeyRow.id == id_or_prefix, ApiKeyRow.prefix == id_or_prefix)))).all()
    if len(rows) != 1:
        raise NotFound(f"no single key matches '{id_or_prefix}'", param="key_id",
                       reason="KEY_NOT_FOUND")
    return rows[0]


def _columns(limits: KeyLimits) -> dict[str, object]:
    return {
        "allowed_models": list(limits.allowed_models)
        if limits.allowed_models is not None else None,
        "daily_image_quota": limits.daily_image_quota,
        "monthly_image_quota": limits.monthly_image_quota,
        "requests_per_minute": limits.requests_per_minute,
        "expires_at": limits.expires_at,
    }


def _encode_token(last: ApiKey) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([last.created_at.isoformat(), last.id])).decode()


def _decode_token(token: str) -> tuple[datetime, str]:
    try:
        created, key_id = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        return datetime.fromisoformat(created), str(key_id)
    except (ValueError, TypeError):
        raise InvalidArgument("page_token is not a token this server gave out",
                              param="page_token") from None


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
