"""Pictures the fakes answer with: real image files of the asked size."""

from __future__ import annotations

import io
import os

from PIL import Image, ImageDraw


def picture(width: int, height: int, index: int = 0, fmt: str = "PNG",
            noise: bool = False) -> bytes:
    """A `width`x`height` image file; `noise` makes it as large as a real model's (2-3 MB)."""
    if noise:
        image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        image = Image.new("RGB", (width, height), ((40 * index) % 256, 120, 200))
        ImageDraw.Draw(image).rectangle((0, 0, width // 4, height // 4), fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
    return out.getvalue()
