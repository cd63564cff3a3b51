"""Source images for edits: base64 (raw or a data URL) decoded and checked to be images.

Each input is checked to decode as PNG, JPEG, WebP or GIF within a pixel limit; anything
else is an InvalidArgument naming `image`.
"""

from __future__ import annotations

import asyncio
import binascii
import io
import re

from PIL import Image, UnidentifiedImageError

from service.errors import InvalidArgument
from service.providers.base import InputImage

MAX_PIXELS = 64_000_000
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
_DATA_URL = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(rb"\s+")


class ImageLoader:
    """Turns the request's `image` strings into checked InputImages."""

    async def load(self, sources: tuple[str, ...]) -> tuple[InputImage, ...]:
        return tuple(await asyncio.gather(*(self._load_one(s, i) for i, s in enumerate(sources))))

    async def _load_one(self, source: str, index: int) -> InputImage:
        if source.startswith(("http://", "https://")):
            raise InvalidArgument(f"image[{index}]: URLs are not accepted by this server",
                                  param="image", reason="UNSUPPORTED_VALUE")
        data = decode_base64(source, index)
        return await asyncio.to_thread(inspect, data, index)


def decode_base64(source: str, index: int) -> bytes:
    text = _DATA_URL.sub("", source, count=1).encode("ascii", "replace")
    try:
        return binascii.a2b_base64(_WHITESPACE.sub(b"", text), strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(
            f"image[{index}] is neither an http(s) URL nor valid base64",
            param="image", reason="INVALID_IMAGE") from None


def inspect(data: bytes, index: int) -> InputImage:
    """Check that `data` is an image we can use; read its type and size."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
            if width * height > MAX_PIXELS:
                raise InvalidArgument(f"image[{index}] is too large ({width}x{height})",
                                      param="image", reason="INVALID_IMAGE")
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError):
        raise InvalidArgument(f"image[{index}] is not a PNG, JPEG, WebP or GIF image",
                              param="image", reason="INVALID_IMAGE") from None
    if kind not in FORMATS:
        raise InvalidArgument(f"image[{index}] is a {kind} image; send PNG, JPEG or WebP",
                              param="image", reason="INVALID_IMAGE")
    return InputImage(data=data, mime_type=FORMATS[kind], width=width, height=height)
