"""What every provider implements, and the plain data that crosses the interface.

Nothing here knows about gRPC or an SDK: a provider receives an ImageJob in its own model's
terms (sizes, qualities already translated) and answers the images it made.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from service.catalog.model_spec import ModelSpec
from service.catalog.pricing import TokenUsage
from service.catalog.sizes import Size
from service.errors import KnownSecrets
from service.net.fetch import GuardedFetcher

MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class InputImage:
    """A source image for an edit, already fetched or decoded and checked to be an image."""

    data: bytes
    mime_type: str
    width: int
    height: int
    alpha: bool = False  # it has an alpha channel (or a transparent colour)


@dataclass(frozen=True)
class ImageJob:
    """One provider call: `n` images of `model` (never above its max_n_per_call)."""

    prompt: str
    model: ModelSpec
    n: int
    size: Size | None  # None: the model chooses (`auto`)
    quality: str
    style: str | None = None
    output_format: str = "png"
    output_compression: int | None = None
    background: str | None = None
    moderation: str | None = None
    user: str | None = None
    images: tuple[InputImage, ...] = ()
    mask: InputImage | None = None  # edits: alpha 0 where the first image is edited
    input_fidelity: str | None = None
    first_index: int = 0  # the position of this call's first image among the request's n
    deadline: float | None = None  # time.monotonic() by which the call must be answered
    request_id: str = ""
    # Streams: previews per image, and where a provider that streams them sends each
    # (index among the request's n, preview number, the preview). 0 or None: no previews.
    partial_images: int = 0
    on_partial: PartialSink | None = field(default=None, compare=False, repr=False)

    @property
    def streams_previews(self) -> bool:
        return bool(self.partial_images and self.on_partial and self.model.partial_images)

    def seconds_left(self, floor: float = 0.05) -> float | None:
        """Time left before the deadline, for SDK timeouts (None: no deadline)."""
        return None if self.deadline is None else max(floor, self.deadline - time.monotonic())

    def split(self) -> list[ImageJob]:
        """This job as calls of at most model.max_n_per_call images each (one each when
        previews stream: an upstream stream of several images does not say which image a
        preview belongs to)."""
        per_call = 1 if self.streams_previews else self.model.max_n_per_call
        return [
            replace(self, n=min(per_call, self.n - start), first_index=self.first_index + start)
            for start in range(0, self.n, per_call)
        ]


@dataclass(frozen=True)
class GeneratedImage:
    """One image as a provider made it: the file's bytes and their type."""

    data: bytes
    mime_type: str
    revised_prompt: str | None = None


PartialSink = Callable[[int, int, GeneratedImage], Awaitable[None]]


@dataclass(frozen=True)
class Generation:
    """What one provider call answered."""

    images: list[GeneratedImage]
    usage: TokenUsage | None = None
    upstream_seconds: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderDeps:
    """What the server lends every provider it builds: the guarded fetcher for answers that
    carry a URL instead of the image (the same guard and limits as source images), the
    credentials to mask wherever an upstream's message is passed on, and the largest answer
    body it reads from an upstream (AIGNE_HUB_MAX_RESPONSE_BYTES: no larger answer could be
    passed on)."""

    fetcher: GuardedFetcher
    secrets: KnownSecrets
    max_answer_bytes: int = 256 << 20


class Provider(Protocol):
    """A source of images. One module per SDK; errors are mapped to HubError at its edge."""

    name: str

    async def generate(self, job: ImageJob) -> Generation: ...

    async def aclose(self) -> None: ...
