"""Streams of one generation: its events as they happen, as StreamGenerate's messages and
as Server-Sent Events for the REST door.

The servicer runs a generation with an `EventQueue` as its `GenerationEvents`: the queue
takes `started` (the request was accepted), `partial` (a preview from the upstream) and
`image` (a finished, stored image) as they happen; `stream` turns them into messages,
repeats the last progress while nothing happens (so no proxy cuts a quiet stream), and
ends with `done` and the usage, or with the generation's error.

Server-Sent Events are written here, not by Envoy: each event is one `google.api.HttpBody`
chunk that Envoy passes through untouched (the transcoder's own SSE printing would print
the base64 of every image, and knows no `event:` lines). Event names follow OpenAI's
image streams, so the `openai` SDKs read them: `image_generation.partial_image`,
`image_generation.completed` (one finished image), plus `image_generation.progress` and
`image_generation.done`; `image_edit.*` for edits. An error after the first event is an
`event: error` whose data is the OpenAI-shaped error body.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import structlog

from aigne.hub.v1 import image_service_pb2 as pb
from service.contract import json_codec
from service.contract.images import image as image_message
from service.errors import HubError, Internal
from service.generation.request import AnswerImage
from service.generation.validation import GenerationPlan

log = structlog.get_logger("aigne.hub")

EVENT_STREAM = "text/event-stream"
MAX_MESSAGE_LENGTH = 1000


_END = None


class EventQueue:
    """The events of one stream, in the order they happened."""

    def __init__(self, previews: int) -> None:
        self.previews = previews
        self.progress: pb.StreamProgress | None = None
        self.images_sent = 0
        self.bytes_sent = 0
        self._sizes: dict[int, int] = {}  # bytes of each finished image, by index
        self._queue: asyncio.Queue[pb.StreamGenerateResponse | None] = asyncio.Queue()

    async def started(self, plan: GenerationPlan, created: int, stage: str) -> None:
        job = plan.job
        self.progress = pb.StreamProgress(
            stage=stage, n=job.n, created=created, model=plan.route.served.name,
            size=str(plan.size) if plan.size else "auto", quality=job.quality,
            output_format=plan.output_format,
            background=job.background if job.background not in (None, "auto") else "")
        self._queue.put_nowait(pb.StreamGenerateResponse(progress=self.progress))

    async def partial(self, index: int, partial_index: int, data: bytes) -> None:
        self._queue.put_nowait(pb.StreamGenerateResponse(partial_image=pb.StreamPartialImage(
            index=index, partial_image_index=partial_index, b64_json=data)))

    async def image(self, index: int, image: AnswerImage, size: int) -> None:
        self._queue.put_nowait(pb.StreamGenerateResponse(
            image=pb.StreamImage(index=index, image=image_message(image))))
        self._sizes[index] = size

    def end(self) -> None:
        self._queue.put_nowait(_END)

    async def next(self, heartbeat: float) -> pb.StreamGenerateResponse | None:
        """The next event; the progress again after `heartbeat` seconds without one."""
        while True:
            try:
                return await asyncio.wait_for(self._queue.get(), heartbeat)
            except TimeoutError:
                if self.progress is not None:
                    self.progress.images_done = self.images_sent
                    return pb.StreamGenerateResponse(progress=self.progress)

    def sent(self, event: pb.StreamGenerateResponse) -> None:
        if event.HasField("image"):
            self.images_sent += 1
            self.bytes_sent += self._sizes.get(event.image.index, 0)


Generation = Callable[[EventQueue], Awaitable[pb.GenerateResponse]]


async def stream(generate: Generation, *, previews: int, heartbeat: float,
                 on_failure: Callable[[int, int], None]
                 ) -> AsyncIterator[pb.StreamGenerateResponse]:
    """The events of `generate` as it runs, then `done`; its error, raised, ends the stream.
    `on_failure(images, bytes)` learns what was sent before a failure. If the stream is
    abandoned, the generation is cancelled."""
    queue = EventQueue(previews)

    async def run() -> pb.GenerateResponse:
        try:
            return await generate(queue)
        finally:
            queue.end()

    task = asyncio.create_task(run())
    try:
        while (event := await queue.next(heartbeat)) is not _END:
            queue.sent(event)
            yield event
        try:
            response = await task  # done: it ended the queue
        except BaseException:
            on_failure(queue.images_sent, queue.bytes_sent)
            raise
        yield pb.StreamGenerateResponse(done=pb.StreamDone(
            created=response.created, usage=response.usage if response.HasField("usage") else None,
            output_format=response.output_format, background=response.background,
            images=len(response.data)))
    finally:
        if not task.done():
            task.cancel()


def server_sent_events(events: AsyncIterator[pb.StreamGenerateResponse], *, edit: bool,
                       request_id: str, on_error: Callable[[HubError], None]
                       ) -> AsyncIterator[bytes]:
    """`events` as Server-Sent Events (see `guarded` for errors)."""
    return guarded(_frames(events, "image_edit" if edit else "image_generation"),
                   request_id=request_id, on_error=on_error)


async def _frames(events: AsyncIterator[pb.StreamGenerateResponse], prefix: str
                  ) -> AsyncIterator[bytes]:
    progress: pb.StreamProgress | None = None
    async for event in events:
        if event.HasField("progress"):
            progress = event.progress
        yield _sse(prefix, event, progress)


async def guarded(frames: AsyncIterator[bytes], *, request_id: str,
                  on_error: Callable[[HubError], None]) -> AsyncIterator[bytes]:
    """`frames`, and their error: raised if it comes before the first frame (the caller
    answers it as an HTTP error), else sent as an `error` event and told to `on_error`."""
    started = False
    try:
        async for chunk in frames:
            started = True
            yield chunk
    except HubError as error:
        if not started:
            raise
        on_error(error)
        yield _error_event(error)
    except Exception:
        if not started:
            raise
        log.exception("unexpected error in a stream", request_id=request_id)
        internal = Internal(f"Something went wrong on our side (request {request_id}).")
        on_error(internal)
        yield _error_event(internal)


def _sse(prefix: str, event: pb.StreamGenerateResponse,
         progress: pb.StreamProgress | None) -> bytes:
    kind = event.WhichOneof("event")
    data: dict[str, Any]
    if kind == "progress":
        p = event.progress
        data = {"type": f"{prefix}.progress", "stage": p.stage, "n": p.n,
                "images_done": p.images_done, "created": p.created, "model": p.model,
                "size": p.size, "quality": p.quality, "output_format": p.output_format}
        if p.background:
            data["background"] = p.background
    elif kind == "partial_image":
        part = event.partial_image
        data = {"type": f"{prefix}.partial_image", "index": part.index,
                "partial_image_index": part.partial_image_index,
                "b64_json": base64.b64encode(part.b64_json).decode("ascii"),
                **_image_facts(progress)}
    elif kind == "image":
        image = event.image.image
        data = {"type": f"{prefix}.completed", "index": event.image.index, **_image_facts(progress)}
        if image.HasField("url"):
            data["url"] = image.url
        else:
            data["b64_json"] = base64.b64encode(image.b64_json).decode("ascii")
        if image.revised_prompt:
            data["revised_prompt"] = image.revised_prompt
    else:
        done = event.done
        data = {"type": f"{prefix}.done", "created": done.created, "images": done.images,
                "output_format": done.output_format}
        if done.background:
            data["background"] = done.background
        if done.HasField("usage"):
            data["usage"] = json_codec.to_json_value(done.usage)
    return frame(data["type"], data)


def _image_facts(progress: pb.StreamProgress | None) -> dict[str, Any]:
    """What OpenAI's image events say about the image besides its bytes."""
    if progress is None:
        return {}
    facts: dict[str, Any] = {"created_at": progress.created, "size": progress.size,
                             "quality": progress.quality, "output_format": progress.output_format}
    if progress.background:
        facts["background"] = progress.background
    return facts


def _error_event(error: HubError) -> bytes:
    body = error.openai_body()
    message = error.message
    body["error"]["message"] = (message if len(message) <= MAX_MESSAGE_LENGTH  # type: ignore[index]
                                else message[:MAX_MESSAGE_LENGTH] + "…")
    body["error"]["http_status"] = error.http_status  # type: ignore[index]
    return frame("error", body)


def frame(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
