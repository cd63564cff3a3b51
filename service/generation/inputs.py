"""Source images for edits: an uploaded file's bytes, base64 (raw or a data URL) decoded, or
an http(s) URL fetched under the guard against server-side request forgery (service/net:
every address public unless the host is on the operator's allowlist, the checked address
connected to, redirects checked again, size and time capped); either way checked to be an
image. A mask is loaded the same way, then checked to fit the first image. The source images
of one request are bounded in pixels together. Anything wrong is an InvalidArgument naming
`image`, and a refused address is never contacted.
"""

from __future__ import annotations

import asyncio
import binascii
import io
import re

from PIL import Image, UnidentifiedImageError

from service.errors import InvalidArgument
from service.net.fetch import FetchFailed, GuardedFetcher
from service.providers.base import InputImage

MAX_PIXELS = 64_000_000
# The guard's reasons an image error keeps; the others (a timeout, an HTTP error) read
# INVALID_IMAGE.
OWN_REASONS = {"INVALID_IMAGE_URL", "IMAGE_URL_FORBIDDEN", "IMAGE_TOO_LARGE"}
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
_DATA_URL = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(rb"\s+")


class ImageLoader:
    """Turns the request's `image` strings into checked InputImages."""

    def __init__(self, fetcher: GuardedFetcher, max_pixels: int = MAX_PIXELS) -> None:
        self._fetcher = fetcher
        self._max_pixels = max_pixels  # the source images of one request together

    async def load(self, sources: tuple[str | bytes, ...]) -> tuple[InputImage, ...]:
        images = tuple(await asyncio.gather(*(self._load_one(s, i)
                                              for i, s in enumerate(sources))))
        pixels = sum(image.width * image.height for image in images)
        if pixels > self._max_pixels:
            raise InvalidArgument(
                f"The source images come to {pixels:,} pixels; a request may send at most "
                f"{self._max_pixels:,}.", param="image", reason="IMAGE_TOO_LARGE")
        return images

    async def load_mask(self, source: str | bytes, image: InputImage) -> InputImage:
        """The mask of an edit of `image`: a PNG with an alpha channel, `image`'s size."""
        try:
            mask = await self._load_one(source, 0)
        except InvalidArgument as error:
            raise InvalidArgument(error.message.replace("image[0]", "mask", 1), param="mask",
                                  reason=error.reason) from None
        if mask.mime_type != "image/png" or not mask.alpha:
            raise InvalidArgument("mask must be a PNG with an alpha channel (transparent where "
                                  "the image is to be edited)", param="mask",
                                  reason="INVALID_MASK")
        if (mask.width, mask.height) != (image.width, image.height):
            raise InvalidArgument(f"mask is {mask.width}x{mask.height}; it must be the size of "
                                  f"the first image, {image.width}x{image.height}",
                                  param="mask", reason="INVALID_MASK")
        return mask

    async def aclose(self) -> None:
        await self._fetcher.aclose()

    async def _load_one(self, source: str | bytes, index: int) -> InputImage:
        if isinstance(source, bytes):  # an uploaded file
            data = source
        elif source[:8].lower().startswith(("http://", "https://")):
            try:
                data = await self._fetcher.fetch(source)
            except FetchFailed as failed:
                reason = failed.reason if failed.reason in OWN_REASONS else "INVALID_IMAGE"
                raise _bad(index, failed.message, reason=reason) from None
        else:
            data = decode_base64(source, index)
        return await asyncio.to_thread(inspect, data, index)


def _bad(index: int, message: str, reason: str = "INVALID_IMAGE") -> InvalidArgument:
    return InvalidArgument(f"image[{index}]: {message}", param="image", reason=reason)


def decode_base64(source: str, index: int) -> bytes:
    text = _DATA_URL.sub("", source, count=1).encode("ascii", "replace")
    try:
        return binascii.a2b_base64(_WHITESPACE.sub(b"", text), strict_mode=True)
    except (binascii.Error, ValueError):
        raise _bad(index, "neither an http(s) URL nor valid base64") from None


def inspect(data: bytes, index: int) -> InputImage:
    """Check that `data` is an image we can use; read its type and size."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
            alpha = "A" in image.getbands() or "transparency" in image.info
            if width * height > MAX_PIXELS:
                raise _bad(index, f"the image is too large ({width}x{height})")
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError):
        raise _bad(index, "not a PNG, JPEG, WebP or GIF image") from None
    if kind not in FORMATS:
        raise _bad(index, f"a {kind} image; send PNG, JPEG or WebP")
    return InputImage(data=data, mime_type=FORMATS[kind], width=width, height=height,
                      alpha=alpha)
