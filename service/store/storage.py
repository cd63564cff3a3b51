"""The image store the settings name, the URLs `url` answers carry, and the retention sweep:
made together at start-up, closed together at shutdown."""

from __future__ import annotations

from dataclasses import dataclass

from service.config import Settings
from service.store.base import ImageStore
from service.store.filesystem import FilesystemStore
from service.store.retention import RetentionSweeper
from service.store.signing import UrlSigner


@dataclass
class ImageStorage:
    store: ImageStore
    urls: UrlSigner  # makes `url` answers; verifies the service's own signed URLs
    sweeper: RetentionSweeper | None

    async def aclose(self) -> None:
        if self.sweeper is not None:
            await self.sweeper.stop()
        aclose = getattr(self.store, "aclose", None)
        if aclose is not None:
            await aclose()


async def open_storage(settings: Settings) -> ImageStorage:
    """The store of AIGNE_HUB_IMAGE_STORE, its URLs (AIGNE_HUB_IMAGE_URLS), and its sweep
    (started). On S3, the bucket's lifecycle rule is set up first, when so configured."""
    assert settings.signing_secret is not None
    secret = settings.signing_secret.get_secret_value().encode()
    store: ImageStore
    if settings.image_store == "s3":
        from service.store.s3 import PresignedUrls, S3Store  # boto3 only when it is used

        s3 = store = S3Store.from_settings(settings)
        await s3.ensure_writable()
        if settings.s3_lifecycle_rule:
            await s3.keep_for(settings.image_retention_seconds)
        urls: UrlSigner = (
            PresignedUrls(s3, secret, settings.public_base, settings.url_ttl_seconds)
            if settings.image_urls == "presigned"
            else UrlSigner(secret, settings.public_base, settings.url_ttl_seconds))
    else:
        store = FilesystemStore(settings.images_dir)
        urls = UrlSigner(secret, settings.public_base, settings.url_ttl_seconds)
    sweeper = None
    if settings.image_retention_seconds and settings.image_sweep_interval_seconds:
        sweeper = RetentionSweeper(store, retention_seconds=settings.image_retention_seconds,
                                   interval_seconds=settings.image_sweep_interval_seconds)
        sweeper.start()
    return ImageStorage(store, urls, sweeper)
