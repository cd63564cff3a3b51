"""Running a checked plan: fan the job out over provider calls, then make every image what
the client asked for.

`fan_out` splits n over calls of at most the model's max_n_per_call, runs them at once
within a bound, retries a call that failed in a retryable way (5xx, broken connection) with
exponential backoff and jitter while the request's budget allows, and fails as one: if a
call fails for good, the others are cancelled. This is the only layer that retries. `conform`
resizes (a retired model served by a successor at another size) and re-encodes (a provider
that cannot make the asked file type) only when the image is not already right.
"""

from __future__ import annotations

import asyncio
import io
import random
from dataclasses import dataclass, replace

import structlog
from PIL import Image, ImageOps

from service.errors import DeadlineExceeded, HubError
from service.imaging import encode
from service.models import Size
from service.providers.base import (
    MIME_TYPES,
    GeneratedImage,
    Generation,
    ImageJob,
    Provider,
)
from service.validation import GenerationPlan

log = structlog.get_logger("aigne.hub")


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2
    base_seconds: float = 0.5
    max_seconds: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.base_seconds * 2**attempt, self.max_seconds) * random.uniform(0.5, 1.0)


async def fan_out(provider: Provider, job: ImageJob, *, concurrency: int, seconds_left: float,
                  retry: RetryPolicy | None = None) -> Generation:
    """All n images of `job`, in order, from as many provider calls as the model needs."""
    limit = asyncio.Semaphore(concurrency)
    policy = retry or RetryPolicy()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds_left

    async def one(part: ImageJob) -> Generation:
        async with limit:
            for attempt in range(policy.retries + 1):
                try:
                    return await provider.generate(part)
                except HubError as error:
                    delay = policy.delay(attempt)
                    if (not error.retryable or attempt == policy.retries
                            or loop.time() + delay >= deadline):
                        raise
                    log.info("upstream retry", request_id=part.request_id, model=part.model.name,
                             reason=error.reason, attempt=attempt + 1, delay_s=round(delay, 2))
                    await asyncio.sleep(delay)
            raise AssertionError("unreachable")

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

