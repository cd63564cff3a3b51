"""Running a checked plan: fan the job out over provider calls, then make every image what
the client asked for.

`fan_out` splits n over calls of at most the model's max_n_per_call, runs them at once
within a bound (each call goes through the router, which picks deployments, falls back and
retries), and fails as one: if a call fails for good, the others are cancelled. `conform`
resizes (a retired model served by a successor at another size) and re-encodes (a provider
that cannot make the asked file type) only when the image is not already right.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from dataclasses import replace

from PIL import Image, ImageOps

from service.catalog.models import Size
from service.errors import DeadlineExceeded
from service.generation.validation import GenerationPlan
from service.providers.base import MIME_TYPES, GeneratedImage, Generation, ImageJob
from service.providers.imaging import encode

PartDone = Callable[[ImageJob, Generation], Awaitable[None]]


# Long: the fan-out's three steps (one part, several, the time budget) read best together.
async def fan_out(generate: Callable[[ImageJob], Awaitable[Generation]], job: ImageJob, *,
                  concurrency: int, seconds_left: float, on_part: PartDone | None = None
                  ) -> Generation:
    """All n images of `job`, in order, from as many upstream calls as the model needs.
    `on_part` (not retried) takes each call's images as soon as that call is done."""
    limit = asyncio.Semaphore(concurrency)

    async def one(part: ImageJob) -> Generation:
        result = await called(part)
        if on_part is not None:
            await on_part(part, result)
        return result

    async def called(part: ImageJob) -> Generation:
        async with limit:
            return await generate(part)

    async def all_parts() -> list[Generation]:
        parts = job.split()
        if len(parts) == 1:  # one call: no task group to make
            return [await one(parts[0])]
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(part)) for part in parts]
        except ExceptionGroup as failures:  # the first failure stands for the request
            raise failures.exceptions[0] from None
        return [task.result() for task in tasks]

    try:
        async with asyncio.timeout(seconds_left):
            results = await all_parts()
    except TimeoutError:
        raise DeadlineExceeded(
            f"{job.model.name} did not answer within the request's time budget "
            f"({seconds_left:.0f} s).") from None
    usages = [r.usage for r in results if r.usage is not None]
    return Generation(
        images=[image for r in results for image in r.images],
        usage=sum(usages[1:], usages[0]) if usages else None,
        upstream_seconds=max(r.upstream_seconds for r in results),
    )


async def conform(images: list[GeneratedImage], plan: GenerationPlan) -> list[GeneratedImage]:
    """Each image at the requested size (when a successor served it) and file type."""
    wanted_mime = MIME_TYPES[plan.output_format]
    resize_to = plan.size if plan.route.translated else None

    async def one(image: GeneratedImage) -> GeneratedImage:
        if image.mime_type == wanted_mime and resize_to is None:
            return image
        return await asyncio.to_thread(_reencode, image, resize_to, plan)

    if resize_to is None and all(image.mime_type == wanted_mime for image in images):
        return images  # the common case, without a task per image
    return list(await asyncio.gather(*(one(image) for image in images)))


def _reencode(image: GeneratedImage, size: Size | None, plan: GenerationPlan) -> GeneratedImage:
    with Image.open(io.BytesIO(image.data)) as source:
        if size is not None and source.size == (size.width, size.height) \
                and image.mime_type == MIME_TYPES[plan.output_format]:
            return image
        picture = source.convert("RGBA")
    if size is not None:
        picture = ImageOps.fit(picture, (size.width, size.height), Image.Resampling.LANCZOS)
    data = encode(picture, plan.output_format, plan.output_compression)
    return replace(image, data=data, mime_type=MIME_TYPES[plan.output_format])

