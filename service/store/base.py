"""The image store interface: put bytes, get them back by name."""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Protocol

from service.errors import NotFound

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
CONTENT_TYPES = {ext: mime for mime, ext in EXTENSIONS.items()}
NAME_PATTERN = re.compile(r"^img_[A-Za-z0-9_-]{22,64}\.(png|jpeg|webp)$")


def new_name(content_type: str) -> str:
    """A fresh, unguessable file name for an image of `content_type`."""
    return f"img_{secrets.token_urlsafe(18)}.{EXTENSIONS[content_type]}"


def content_type_of(name: str) -> str:
    """The Content-Type of a stored image, from its name; NotFound for a name we never made."""
    if not NAME_PATTERN.match(name):
        raise NotFound("no such image", param="name", reason="IMAGE_NOT_FOUND")
    return CONTENT_TYPES[name.rsplit(".", 1)[1]]


class ImageStore(Protocol):
    async def put(self, data: bytes, content_type: str) -> str:
        """Store the image; answer its name."""
        ...

    async def get(self, name: str) -> tuple[bytes, str]:
        """The image's bytes and Content-Type; NotFound if it is gone."""
        ...

    async def check(self) -> None:
        """Raise if the store cannot be written (readiness)."""
        ...

    async def sweep(self, older_than: datetime) -> int:
        """Delete the images stored before `older_than`; answer how many went. Only names
        this service makes are touched."""
        ...
