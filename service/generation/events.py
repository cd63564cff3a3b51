"""Where a generation tells what happens as it goes (for streams): it was accepted
(`started`), a preview came from the upstream (`partial`), an image is finished and stored
(`image`). Calls that answer once pass NO_EVENTS; the stream doors (service/api/streams.py)
queue them as StreamGenerate messages and Server-Sent Events."""

from __future__ import annotations

from typing import Protocol

from service.generation.request import AnswerImage
from service.generation.validation import GenerationPlan


class GenerationEvents(Protocol):
    """Where a generation tells what happens. `previews`: partial images wanted per image."""

    previews: int

    async def started(self, plan: GenerationPlan, created: int, stage: str) -> None: ...

    async def partial(self, index: int, partial_index: int, data: bytes) -> None: ...

    async def image(self, index: int, image: AnswerImage, size: int) -> None: ...


class NoEvents:
    """For calls that answer once."""

    previews = 0

    async def started(self, plan: GenerationPlan, created: int, stage: str) -> None:
        return None

    async def partial(self, index: int, partial_index: int, data: bytes) -> None:
        return None

    async def image(self, index: int, image: AnswerImage, size: int) -> None:
        return None


NO_EVENTS = NoEvents()
