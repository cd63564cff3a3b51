"""Encoding pictures as image files, the one way every module does it."""

from __future__ import annotations

import io

from PIL import Image

DEFAULT_QUALITY = 90


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
