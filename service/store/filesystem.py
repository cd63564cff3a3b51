"""Images as files under one directory, sharded by the first characters of their name."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from datetime import datetime
from pathlib import Path

from service.errors import NotFound, Unavailable
from service.store.base import NAME_PATTERN, content_type_of, new_name

# Out of space, out of quota, or past the largest file this process may write.
FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class FilesystemStore:
    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)  # images are readable by this user only (files 0600)

    def _path(self, name: str) -> Path:
        return self._root / name[4:6] / name

    async def put(self, data: bytes, content_type: str) -> str:
        name = new_name(content_type)
        await asyncio.to_thread(self._write, self._path(name), data)
        return name

    async def get(self, name: str) -> tuple[bytes, str]:
        content_type = content_type_of(name)
        try:
            data = await asyncio.to_thread(self._path(name).read_bytes)
        except FileNotFoundError:
            raise NotFound("no such image", param="name", reason="IMAGE_NOT_FOUND") from None
        except OSError as exc:
            raise Unavailable("The image store cannot be read right now; try again later.",
                              reason="STORE_UNAVAILABLE", retry_after=30) from exc
        return data, content_type

    async def check(self) -> None:
        await asyncio.to_thread(self._write, self._root / ".ready", b"ok")

    async def sweep(self, older_than: datetime) -> int:
        return await asyncio.to_thread(self._sweep, older_than.timestamp())

    def _sweep(self, cutoff: float) -> int:
        """Delete images (and temporary files a crash left) last written before `cutoff`."""
        deleted = 0
        for shard in _entries(self._root):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for entry in _entries(Path(shard.path)):
                ours = NAME_PATTERN.match(entry.name) or (
                    entry.name.endswith(".tmp") and NAME_PATTERN.match(entry.name[1:-4]))
                try:
                    if ours and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        deleted += 1
                except FileNotFoundError:  # another replica's sweep was first
                    continue
        return deleted

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        """Write whole or not at all: a temporary file renamed into place. A failure leaves
        nothing behind and says whether the store is full or out of reach."""
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if exc.errno in FULL:
                raise Unavailable("The image store is full; try again later, or ask for "
                                  "response_format b64_json.", reason="STORE_FULL",
                                  retry_after=30) from exc
            raise Unavailable("The image store cannot be written right now; try again later.",
                              reason="STORE_UNAVAILABLE", retry_after=30) from exc


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except FileNotFoundError:
        return []
