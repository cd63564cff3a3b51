"""OpenAI's image stream, field for field: what `stream: true` on `POST /api/images/generations`
and `/api/images/edits` answers, for the `openai` SDKs' `images.generate(stream=True)` and
`images.edit(stream=True)`.

It is made from the same events as StreamGenerate's (service/api/streams.py), told the way
OpenAI tells them: `image_generation.partial_image` (`type`, `b64_json`, `created_at`, `size`,
`quality`, `background`, `output_format`, `partial_image_index`) for each preview, and
`image_generation.completed` (the same but `partial_image_index`, plus `usage`) for each
image; `image_edit.*` for edits. No progress or done events: while nothing else happens a
comment line (`: keep-alive`) keeps proxies from cutting the stream, which SSE clients skip.

With n > 1 each image has its own previews and `completed` event, in the order they are
made; the request's usage rides on the last `completed` event and the earlier ones carry
zero usage, so the events' usage adds up to the request's. Models not billed by tokens send
zero usage. An error after the first event is an `error` event whose data is the usual
OpenAI-shaped error body (the SDKs raise it as an APIError).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from aigne.hub.v1 import image_service_pb2 as pb
from service.api.streams import frame, guarded
from service.contract import json_codec
from service.errors import HubError, InvalidArgument
from service.generation.request import ImageRequest

KEEP_ALIVE = b": keep-alive\n\n"
NO_USAGE = {"total_tokens": 0, "input_tokens": 0, "output_tokens": 0,
            "input_tokens_details": {"text_tokens": 0, "image_tokens": 0}}


def streamed(asked: ImageRequest) -> ImageRequest:
    """`asked` as a stream answers it: OpenAI's stream events carry the image bytes only."""
    if asked.response_format not in ("", "b64_json"):
        raise InvalidArgument("stream: true answers b64_json (OpenAI's stream events carry "
                              "the image bytes); leave response_format out, or use "
                              "POST /api/images/generations:stream for url events",
                              param="response_format", reason="UNSUPPORTED_VALUE")
    return replace(asked, response_format="b64_json")


def openai_events(events: AsyncIterator[pb.StreamGenerateResponse], *, edit: bool,
                  request_id: str, on_error: Callable[[HubError], None]
                  ) -> AsyncIterator[bytes]:
    """`events` as OpenAI's Server-Sent Events (see the module docstring)."""
    return guarded(_frames(events, "image_edit" if edit else "image_generation"),
                   request_id=request_id, on_error=on_error)


async def _frames(events: AsyncIterator[pb.StreamGenerateResponse], prefix: str
                  ) -> AsyncIterator[bytes]:
    facts: dict[str, Any] = {}
    held: bytes | None = None  # the latest image, sent once the next one or the end
    async for event in events:  # comes, which says whether its usage is the request's
        kind = event.WhichOneof("event")
        if kind == "progress":
            if facts:
                yield KEEP_ALIVE
            facts = _facts(event.progress)
        elif kind == "partial_image":
            yield frame(f"{prefix}.partial_image", {
                "type": f"{prefix}.partial_image",
                "b64_json": base64.b64encode(event.partial_image.b64_json).decode("ascii"),
                **facts, "partial_image_index": event.partial_image.partial_image_index})
        elif kind == "image":
            if held is not None:
                yield _completed(prefix, held, facts, NO_USAGE)
            held = event.image.image.b64_json
        elif held is not None:  # done
            usage = (json_codec.to_json_value(event.done.usage)
                     if event.done.HasField("usage") else NO_USAGE)
            yield _completed(prefix, held, facts, usage)


def _facts(progress: pb.StreamProgress) -> dict[str, Any]:
    return {"created_at": progress.created, "size": progress.size, "quality": progress.quality,
            "background": progress.background or "auto", "output_format": progress.output_format}


def _completed(prefix: str, image: bytes, facts: dict[str, Any],
               usage: dict[str, Any]) -> bytes:
    return frame(f"{prefix}.completed", {
        "type": f"{prefix}.completed", "b64_json": base64.b64encode(image).decode("ascii"),
        **facts, "usage": usage})
