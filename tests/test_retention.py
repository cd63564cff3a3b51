"""Retention on the filesystem store: the sweep deletes images older than the retention (and
the temporary files a crash left), and nothing that is not ours; the settings that go with it."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.store.base import new_name
from service.store.filesystem import FilesystemStore
from service.store.retention import RetentionSweeper

HOUR = 3600


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_sweep_deletes_what_is_older_than_the_retention(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    old = await store.put(b"old", "image/png")
    new = await store.put(b"new", "image/webp")
    _age(tmp_path / old[4:6] / old, 2 * HOUR)
    cut_short = new_name("image/jpeg")  # a write a crash interrupted
    crashed = tmp_path / cut_short[4:6] / f".{cut_short}.tmp"
    crashed.parent.mkdir(exist_ok=True)
    crashed.write_bytes(b"half")
    _age(crashed, 2 * HOUR)
    foreign = [tmp_path / "notes.txt", tmp_path / new[4:6] / "README", tmp_path / ".ready"]
    for path in foreign:
        path.write_bytes(b"not an image")
        _age(path, 2 * HOUR)

    sweeper = RetentionSweeper(store, retention_seconds=HOUR, interval_seconds=60)
    assert await sweeper.sweep() == 2

    assert await store.get(new) == (b"new", "image/webp")
    assert not (tmp_path / old[4:6] / old).exists()
    assert not crashed.exists()
    assert all(path.exists() for path in foreign)
    assert await sweeper.sweep() == 0


async def test_a_failing_sweep_is_logged_and_tried_again(tmp_path: Path) -> None:
    class Broken(FilesystemStore):
        async def sweep(self, older_than):  # type: ignore[no-untyped-def]
            raise OSError("disk on fire")

    sweeper = RetentionSweeper(Broken(tmp_path), retention_seconds=HOUR, interval_seconds=60)
    assert await sweeper.sweep() == 0


async def test_the_sweep_runs_by_itself_until_stopped(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    name = await store.put(b"old", "image/png")
    _age(tmp_path / name[4:6] / name, 2 * HOUR)
    sweeper = RetentionSweeper(store, retention_seconds=HOUR, interval_seconds=0.05)
    sweeper.start()
    try:
        deadline = time.monotonic() + 10
        while (tmp_path / name[4:6] / name).exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await sweeper.stop()


@pytest.mark.parametrize(("settings", "message"), [
    ({"image_store": "s3"}, "needs AIGNE_HUB_S3_BUCKET"),
    ({"image_urls": "presigned"}, "needs AIGNE_HUB_IMAGE_STORE=s3"),
    ({"image_store": "s3", "s3_bucket": "b", "image_urls": "presigned",
      "url_ttl_seconds": 8 * 86_400, "image_retention_seconds": 0}, "at most 604800 s"),
    ({"image_retention_seconds": 60}, "shorter than AIGNE_HUB_URL_TTL_SECONDS"),
    ({"signing_secret": ""}, "AIGNE_HUB_SIGNING_SECRET is set but empty"),
    ({"key_hash_secret": " "}, "AIGNE_HUB_KEY_HASH_SECRET is set but empty"),
    ({"credentials_key": ""}, "AIGNE_HUB_CREDENTIALS_KEY is set but empty"),
    ({"database_url": ""}, "AIGNE_HUB_DATABASE_URL is set but empty"),
    ({"envoy_upstreams": "server-without-port"}, "must be host:port"),
])
def test_inconsistent_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**settings)


def test_retention_zero_keeps_images_and_default_outlives_the_urls() -> None:
    assert Settings(image_retention_seconds=0, url_ttl_seconds=86_400 * 30)
    defaults = Settings()
    assert defaults.image_retention_seconds >= defaults.url_ttl_seconds
