"""Images in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2, ...), shared by every replica.

The boto3 client is made once from the settings and injected; its calls block, so they run
on a thread pool of this store's own, sized like the client's connection pool. boto3
retries throttling and dropped connections itself (standard mode); nothing above retries.
Objects are named `<prefix><image name>`; only names this service makes are read, swept
or counted as ours, so a prefix may share a bucket with other data (but a lifecycle rule
applies to everything under its prefix: give the service a prefix of its own).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from service.config import Settings
from service.errors import NotFound, Unavailable
from service.store.base import NAME_PATTERN, content_type_of, new_name
from service.store.signing import UrlSigner

log = structlog.get_logger("aigne.hub")

T = TypeVar("T")
CONNECTIONS = 32
DAY_SECONDS = 86_400
LIFECYCLE_RULE_PREFIX = "aigne-hub-retention:"
MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


def client_from_settings(settings: Settings, endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client for the settings (`endpoint_url` overrides theirs)."""
    config = Config(signature_version="s3v4", max_pool_connections=CONNECTIONS,
                    connect_timeout=5, read_timeout=60,
                    retries={"mode": "standard", "max_attempts": 3},
                    s3={"addressing_style": settings.s3_addressing_style})
    secret = settings.s3_secret_access_key
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url or settings.s3_endpoint_url,
        region_name=settings.s3_region, config=config,
        aws_access_key_id=settings.s3_access_key_id or None,  # empty: boto3's own chain
        aws_secret_access_key=secret.get_secret_value() or None if secret else None)


class S3Store:
    def __init__(self, client: Any, bucket: str, prefix: str = "", *,
                 presigner: Any | None = None) -> None:
        """`presigner` signs URLs for clients (a client on the public endpoint, when the
        servers reach the bucket at another address); by default `client` does."""
        self._client = client
        self._presigner = presigner or client
        self._bucket = bucket
        self._prefix = prefix
        self._pool = ThreadPoolExecutor(CONNECTIONS, thread_name_prefix="s3")

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        assert settings.s3_bucket
        presign = settings.s3_presign_endpoint_url
        return cls(client_from_settings(settings), settings.s3_bucket, settings.s3_prefix,
                   presigner=client_from_settings(settings, presign) if presign else None)

    def _key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    async def _call(self, method: Callable[..., T], /, **params: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: method(**params))

    async def put(self, data: bytes, content_type: str) -> str:
        name = new_name(content_type)
        try:
            await self._call(self._client.put_object, Bucket=self._bucket, Key=self._key(name),
                             Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("written", exc) from exc
        return name

    async def get(self, name: str) -> tuple[bytes, str]:
        content_type = content_type_of(name)
        try:
            answer = await self._call(self._client.get_object, Bucket=self._bucket,
                                      Key=self._key(name))
            data = await self._call(answer["Body"].read)
        except ClientError as exc:
            if _code(exc) in MISSING:
                raise NotFound("no such image", param="name", reason="IMAGE_NOT_FOUND") from None
            raise _unavailable("read", exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("read", exc) from exc
        return data, content_type

    async def check(self) -> None:
        try:
            await self._call(self._client.put_object, Bucket=self._bucket,
                             Key=self._key(".ready"), Body=b"ok")
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("written", exc) from exc

    async def ensure_writable(self) -> None:
        """At start-up: fail with a clear message unless the bucket takes a write."""
        try:
            await self.check()
        except Unavailable:
            await self.aclose()
            raise RuntimeError(
                f"the image store's bucket {self._bucket!r} cannot be written (is it there, "
                "and may these credentials write to it?): check AIGNE_HUB_S3_* and the log "
                "line above") from None

    def presigned_url(self, name: str, ttl_seconds: int) -> str:
        """The bucket's own URL of `name`, valid for `ttl_seconds` (signed locally, no call)."""
        return str(self._presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": self._key(name)},
            ExpiresIn=ttl_seconds))

    async def sweep(self, older_than: datetime) -> int:
        return await self._call(self._sweep, older_than=older_than)

    def _sweep(self, older_than: datetime) -> int:
        stale = []
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=self._prefix)
        for page in pages:
            for item in page.get("Contents", []):
                name = item["Key"][len(self._prefix):]
                if NAME_PATTERN.match(name) and item["LastModified"] < older_than:
                    stale.append({"Key": item["Key"]})
        for start in range(0, len(stale), DELETE_BATCH):
            self._client.delete_objects(Bucket=self._bucket, Delete={
                "Objects": stale[start:start + DELETE_BATCH], "Quiet": True})
        return len(stale)

    async def keep_for(self, retention_seconds: int) -> None:
        """Make the bucket's lifecycle rule for our prefix expire objects after the retention
        (in whole days, rounded up: S3's unit), or remove it (0). Other rules are kept.
        Without the permission, say so and rely on the sweep."""
        try:
            await self._call(self._set_lifecycle_rule, retention_seconds=retention_seconds)
        except (BotoCoreError, ClientError) as exc:
            log.warning("could not set the bucket's lifecycle rule; images are deleted by the "
                        "sweep alone", bucket=self._bucket, error=_code(exc) or str(exc))

    def _set_lifecycle_rule(self, retention_seconds: int) -> None:
        rule_id = f"{LIFECYCLE_RULE_PREFIX}{self._prefix}"[:255]
        days = math.ceil(retention_seconds / DAY_SECONDS) if retention_seconds else None
        rules = self._lifecycle_rules()
        others = [rule for rule in rules if rule.get("ID") != rule_id]
        ours: list[dict[str, Any]] = [
            {"ID": rule_id, "Filter": {"Prefix": self._prefix}, "Status": "Enabled",
             "Expiration": {"Days": days}}] if days else []
        if [_essentials(r) for r in rules if r.get("ID") == rule_id] == ours:
            return
        if others or ours:
            self._client.put_bucket_lifecycle_configuration(
                Bucket=self._bucket, LifecycleConfiguration={"Rules": others + ours})
        else:
            self._client.delete_bucket_lifecycle(Bucket=self._bucket)
        log.info("bucket lifecycle rule set", bucket=self._bucket, rule=rule_id, days=days)

    def _lifecycle_rules(self) -> list[dict[str, Any]]:
        try:
            answer = self._client.get_bucket_lifecycle_configuration(Bucket=self._bucket)
        except ClientError as exc:
            if _code(exc) == "NoSuchLifecycleConfiguration":
                return []
            raise
        return list(answer.get("Rules", []))

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class PresignedUrls(UrlSigner):
    """`url` answers that point at the bucket itself: S3 presigned GETs that expire after
    the TTL. The service's own signed URLs still verify (GetImage), so URLs handed out
    before a switch keep working until they expire."""

    def __init__(self, store: S3Store, secret: bytes, public_base: str, ttl_seconds: int) -> None:
        super().__init__(secret, public_base, ttl_seconds)
        self._store = store
        self._ttl_seconds = ttl_seconds

    def url(self, name: str, now: float | None = None) -> str:
        return self._store.presigned_url(name, self._ttl_seconds)


def _essentials(rule: dict[str, Any]) -> dict[str, Any]:
    return {k: rule.get(k) for k in ("ID", "Filter", "Status", "Expiration")}


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _unavailable(what: str, exc: Exception) -> Unavailable:
    log.warning("image store call failed", error=_code(exc) or type(exc).__name__,
                detail=str(exc)[:300])
    return Unavailable(f"The image store cannot be {what} right now; try again later.",
                       reason="STORE_UNAVAILABLE", retry_after=30)
