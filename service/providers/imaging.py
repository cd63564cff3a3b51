"""Encoding pictures as image files, the one way every module does it."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from service.errors import UpstreamFailed
from service.providers.base import GeneratedImage, ImageJob

DEFAULT_QUALITY = 90
FORMATS = ("PNG", "JPEG", "WEBP")  # the files we take and answer; Pillow tries no other
INLINE_CHECK_BYTES = 256 << 10  # smaller images are checked at once, larger ones in a thread


def encode(image: Image.Image, output_format: str, compression: int | None = None) -> bytes:
    """`image` as a file of `output_format` (png, jpeg, webp); compression 0-100 for jpeg, webp."""
    out = io.BytesIO()
    quality = compression if compression is not None else DEFAULT_QUALITY
    if output_format == "jpeg":
        image.convert("RGB").save(out, "JPEG", quality=quality)
    elif output_format == "webp":
        image.save(out, "WEBP", quality=quality)
    else:
        image.save(out, "PNG", compress_level=3)
    return out.getvalue()


async def checked_image(data: bytes, job: ImageJob, revised_prompt: str | None = None
                        ) -> GeneratedImage:
    """An upstream's image for `job`, checked to be a whole PNG, JPEG or WebP file
    (UpstreamFailed if not): at once when it is small (a thread hop would cost more than the
    check), else in a thread, off the event loop."""
    if len(data) > INLINE_CHECK_BYTES:
        mime_type = await asyncio.to_thread(verified_mime_type, data)
    else:
        mime_type = verified_mime_type(data)
    if mime_type is None:
        raise UpstreamFailed(f"{job.model.upstream} answered an image that is broken or not "
                             "PNG, JPEG or WebP.")
    return GeneratedImage(data=data, mime_type=mime_type, revised_prompt=revised_prompt)


def verified_mime_type(data: bytes) -> str | None:
    """The MIME type of a whole, readable PNG, JPEG or WebP file; None for anything else
    (garbage, a truncated file). Checks the file's structure without decoding every pixel."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            kind = image.format
            image.verify()
    except Exception:  # Pillow raises many kinds for broken files
        return None
    if kind != "PNG":
        # verify() checks a PNG's chunk CRCs (a few ms for 3 MB), but not a JPEG's or WebP's
        # data: decode those.
        try:
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                image.load()
        except Exception:
            return None
    return {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}.get(kind or "")
