"""The built-in local renderer: a real provider that needs no key.

It draws a picture of the prompt with Pillow: a gradient, shapes and the prompt's text,
all chosen from a hash of the prompt and the image's index, so the same request gives the
same bytes and each of the n images differs. Given source images it draws over the first
one (an edit); with a mask, only where the mask is transparent, the rest of the first image
kept as it was. It honours size, output_format, output_compression and background.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageDraw, ImageFont, ImageOps

from service.catalog.deployments import Deployment
from service.catalog.models import Size
from service.errors import InvalidArgument
from service.providers.base import MIME_TYPES, GeneratedImage, Generation, ImageJob, InputImage
from service.providers.imaging import encode

DEFAULT_SIZE = Size(1024, 1024)
DEFAULT_THREADS = 2
DEFAULT_MAX_REQUEST_PIXELS = 64_000_000
_TURNS = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)


class LocalProvider:
    """Drawing is CPU work: it runs on a few threads of this provider's own (not the event
    loop, not the default executor), one image at a time per request, so a request of big
    images holds one thread while other requests use the others; the source is decoded
    once per request; and the pixels one request may take (its sources and the images it
    asks for) are bounded, refused with a 400 above that."""

    name = "local"

    def __init__(self, *, threads: int = DEFAULT_THREADS,
                 max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS) -> None:
        self._work = ThreadPoolExecutor(threads, thread_name_prefix="local-render")
        self._max_pixels = max_request_pixels

    @classmethod
    def build(cls, deployment: Deployment, secret: str) -> LocalProvider:
        options = deployment.options
        return cls(threads=int(options.get("threads", DEFAULT_THREADS)),
                   max_request_pixels=int(options.get("max_request_pixels",
                                                      DEFAULT_MAX_REQUEST_PIXELS)))

    async def generate(self, job: ImageJob) -> Generation:
        started = time.perf_counter()
        size = job.size or DEFAULT_SIZE
        self._check_pixels(job, size)
        loop = asyncio.get_running_loop()
        source = (await loop.run_in_executor(self._work, _cover, job.images[0], size)
                  if job.images else None)
        images = [await loop.run_in_executor(self._work, render, job, job.first_index + i, source)
                  for i in range(job.n)]
        return Generation(images=images, upstream_seconds=time.perf_counter() - started)

    def _check_pixels(self, job: ImageJob, size: Size) -> None:
        pixels = (sum(image.width * image.height for image in job.images)
                  + job.n * size.width * size.height)
        if pixels > self._max_pixels:
            raise InvalidArgument(
                f"This request needs {pixels:,} pixels (its source images and {job.n} "
                f"images of {size.width}x{size.height}); the local renderer takes at most "
                f"{self._max_pixels:,} per request. Ask for fewer or smaller images, or send "
                "a smaller source image.", param="n", reason="TOO_MANY_PIXELS")

    async def aclose(self) -> None:
        self._work.shutdown(wait=False, cancel_futures=True)


def render(job: ImageJob, index: int, source: Image.Image | None = None) -> GeneratedImage:
    """Draw image number `index` of `job` (over `source`, the decoded source image fitted to
    the job's size, if any) and encode it in the job's output format."""
    size = job.size or DEFAULT_SIZE
    rng = random.Random(hashlib.sha256(f"{index}\0{job.prompt}".encode()).digest())
    transparent = job.background == "transparent"
    canvas = source.copy() if source is not None else _gradient(size, rng, transparent)
    _draw_shapes(canvas, rng, faint=source is not None)
    _draw_caption(canvas, job.prompt, index, edited=source is not None)
    if job.mask is not None and source is not None:
        canvas = _masked(canvas, source, job.mask, size)
    return GeneratedImage(data=encode(canvas, job.output_format, job.output_compression),
                          mime_type=MIME_TYPES[job.output_format])


def _color(rng: random.Random, alpha: int = 255) -> tuple[int, int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256), alpha)


def _gradient(size: Size, rng: random.Random, transparent: bool) -> Image.Image:
    top, bottom = _color(rng), _color(rng)
    if transparent:
        return Image.new("RGBA", (size.width, size.height), (0, 0, 0, 0))
    direction = rng.choice((None, *_TURNS))
    gradient = Image.linear_gradient("L")
    if direction is not None:
        gradient = gradient.transpose(direction)
    mask = gradient.resize((size.width, size.height))
    return Image.composite(Image.new("RGBA", mask.size, top),
                           Image.new("RGBA", mask.size, bottom), mask)


def _cover(source: InputImage, size: Size) -> Image.Image:
    """The source decoded (a JPEG at a reduced scale where it can) and fitted to `size`,
    made RGBA at that size rather than at its own."""
    with Image.open(io.BytesIO(source.data)) as opened:
        opened.draft(opened.mode, (size.width, size.height))
        image: Image.Image = opened
        if image.mode not in ("RGB", "RGBA", "L", "LA"):
            image = image.convert("RGBA")
        return ImageOps.fit(image, (size.width, size.height)).convert("RGBA")


def _masked(edited: Image.Image, original: Image.Image, mask: InputImage,
            size: Size) -> Image.Image:
    """`edited` where `mask` is transparent, the (decoded, fitted) source image elsewhere,
    as OpenAI edits."""
    with Image.open(io.BytesIO(mask.data)) as opened:
        alpha = ImageOps.fit(opened.convert("RGBA"), (size.width, size.height)).getchannel("A")
    return Image.composite(original, edited, alpha)


def _draw_shapes(canvas: Image.Image, rng: random.Random, faint: bool) -> None:
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    w, h = canvas.size
    for _ in range(rng.randrange(4, 9)):
        x, y = rng.randrange(w), rng.randrange(h)
        r = rng.randrange(max(2, min(w, h) // 12), max(3, min(w, h) // 3))
        fill = _color(rng, 90 if faint else 180)
        kind = rng.randrange(3)
        if kind == 0:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif kind == 1:
            draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=fill)
        else:
            draw.regular_polygon((x, y, r), rng.randrange(3, 8), rotation=rng.randrange(360),
                                 fill=fill)
    canvas.alpha_composite(layer)


def _draw_caption(canvas: Image.Image, prompt: str, index: int, edited: bool) -> None:
    w, h = canvas.size
    font_size = max(8, min(w, h) // 24)
    font = ImageFont.load_default(size=font_size)
    width_chars = max(8, int(w / (font_size * 0.6)))
    lines = textwrap.wrap(prompt, width_chars)[:4] or [""]
    label = f"#{index + 1}" + (" (edit)" if edited else "")
    text = "\n".join([*lines, label])
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    box = draw.multiline_textbbox((0, 0), text, font=font)
    margin = font_size // 2
    y = h - (box[3] - box[1]) - 2 * margin
    draw.rectangle((0, y - margin, w, h), fill=(0, 0, 0, 140))
    draw.multiline_text((margin, y), text, font=font, fill=(255, 255, 255, 255))
    canvas.alpha_composite(layer)
