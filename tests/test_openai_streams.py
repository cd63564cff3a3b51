"""`stream: true` the OpenAI way on POST /api/images/generations and /api/images/edits, through
Envoy: the openai SDK's `images.generate(stream=True)` and `images.edit(stream=True)` at the
plain base URL, every event valid against OpenAI's published schema, told as it happens."""

from __future__ import annotations

import base64
import json
import time

import httpx
import openai
import pytest

from tests.conftest import http_client, open_image, openai_client
from tests.fakes.images import picture
from tests.fakes.server import Reply
from tests.long_running import Event, read_events
from tests.openai_schema import assert_openai
from tests.stack import Stack
from tests.test_bad_input import assert_error
from tests.test_edits import half_mask, png

GENERATIONS = "/api/images/generations"
EDITS = "/api/images/edits"
SCHEMAS = {"image_generation.partial_image": "ImageGenPartialImageEvent",
           "image_generation.completed": "ImageGenCompletedEvent",
           "image_edit.partial_image": "ImageEditPartialImageEvent",
           "image_edit.completed": "ImageEditCompletedEvent"}


def sse(client: httpx.Client, path: str, **body: object) -> tuple[httpx.Response, list[Event]]:
    started = time.monotonic()
    kwargs = {"json": body} if path == GENERATIONS else body
    with client.stream("POST", path, **kwargs) as answer:  # type: ignore[arg-type]
        if answer.status_code != 200:
            answer.read()
            return answer, []
        return answer, read_events(answer.iter_lines(), started)


def assert_openai_events(events: list[Event]) -> None:
    for event in events:
        assert event.data["type"] == event.name
        assert_openai(event.data, SCHEMAS[event.name])


def test_sdk_streams_a_generation_at_the_plain_base_url(provider_stack: Stack, fakes) -> None:
    with openai_client(provider_stack) as client:
        events = list(client.images.generate(model="gpt-image-2", prompt="a fox", stream=True,
                                             partial_images=2, size="1024x1536"))
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"]
    assert all(isinstance(e, openai.types.ImageGenPartialImageEvent) for e in events[:2])
    completed = events[-1]
    assert isinstance(completed, openai.types.ImageGenCompletedEvent)
    assert open_image(base64.b64decode(completed.b64_json)).size == (1024, 1536)
    assert completed.usage.output_tokens > 0 and completed.size == "1024x1536"
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    sent = fakes[0].requests_to("generations")[0].json
    assert (sent["stream"], sent["partial_images"]) == (True, 2)


def test_raw_events_match_openais_schema_and_arrive_as_they_happen(provider_stack: Stack,
                                                                    fakes) -> None:
    with http_client(provider_stack) as client:
        answer, events = sse(client, GENERATIONS, model="gpt-image-2", prompt="a fox",
                             stream=True, partial_images=3, background="opaque")
    assert answer.headers["content-type"] == "text/event-stream"
    assert answer.headers["x-model-served"] == "gpt-image-2"
    assert [e.name for e in events] == ["image_generation.partial_image"] * 3 + [
        "image_generation.completed"]
    assert_openai_events(events)
    assert set(events[-1].data) == {"type", "b64_json", "created_at", "size", "quality",
                                    "background", "output_format", "usage"}
    assert set(events[0].data) == {"type", "b64_json", "created_at", "size", "quality",
                                   "background", "output_format", "partial_image_index"}
    assert events[-1].data["background"] == "opaque"
    assert events[-1].at - events[0].at > 0.3, "the fake waits 0.15 s between its events"


def test_n_images_each_complete_and_the_last_carries_the_usage(provider_stack: Stack,
                                                               fakes) -> None:
    with http_client(provider_stack) as client:
        _, events = sse(client, GENERATIONS, model="dall-e-3", prompt="a fox", stream=True,
                        n=2, partial_images=1)
    assert sorted(e.name for e in events) == ["image_generation.completed"] * 2 + [
        "image_generation.partial_image"] * 2
    assert_openai_events(events)
    completed = [e.data for e in events if e.name.endswith(".completed")]
    assert completed[0]["usage"]["total_tokens"] == 0 < completed[1]["usage"]["total_tokens"]
    assert completed[0]["quality"] == "medium", "dall-e-3 standard, as gpt-image-2 makes it"


def test_sdk_streams_an_edit_with_a_mask(provider_stack: Stack, fakes) -> None:
    with openai_client(provider_stack) as client:
        events = list(client.images.edit(
            image=("a.png", png(1024, 1024), "image/png"),
            mask=("m.png", half_mask(1024, 1024), "image/png"), prompt="add a hat",
            model="gpt-image-2", stream=True, partial_images=1))
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert isinstance(events[-1], openai.types.ImageEditCompletedEvent)
    edit = fakes[0].requests_to("edits")[0]
    assert edit.fields["stream"] == ["true"] and "mask" in edit.files
    with http_client(provider_stack) as client:
        _, raw = sse(client, EDITS, files={"image": ("a.png", png(1024, 1024), "image/png")},
                     data={"prompt": "x", "model": "gpt-image-2", "stream": "true",
                           "partial_images": "2"})
    assert [e.name for e in raw] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    assert_openai_events(raw)


def test_models_that_cannot_stream_send_their_completed_events(stack: Stack) -> None:
    with openai_client(stack) as client:
        events = list(client.images.generate(model="local", prompt="x", size="64x64", n=3,
                                             stream=True, partial_images=2))
    assert [e.type for e in events] == ["image_generation.completed"] * 3
    assert all(open_image(base64.b64decode(e.b64_json)).size == (64, 64) for e in events)
    assert all(e.usage.total_tokens == 0 for e in events)


def test_errors_before_the_first_event_are_http_errors(provider_stack: Stack, fakes) -> None:
    with http_client(provider_stack) as client:
        answer, _ = sse(client, GENERATIONS, model="gpt-image-2", prompt="x", stream=True,
                        response_format="url")
        assert_error(answer, 400, "response_format", "unsupported_value")
        answer, _ = sse(client, GENERATIONS, model="gpt-image-2", prompt="x", stream=True,
                        partial_images=4)
        assert_error(answer, 400, "partial_images")
    broken = Reply(500, json={"error": {"message": "The server had an error", "type":
                                        "server_error", "param": None, "code": None}})
    fakes[0].script("generations", *[broken] * 6)
    with openai_client(provider_stack) as sdk, pytest.raises(openai.APIStatusError) as caught:
        list(sdk.images.generate(model="gpt-image-2", prompt="x", stream=True))
    assert caught.value.status_code == 502


def test_an_error_after_the_first_event_is_an_error_event(provider_stack: Stack, fakes) -> None:
    preview = {"type": "image_generation.partial_image", "partial_image_index": 0,
               "b64_json": base64.b64encode(picture(1024, 1024)).decode(), "created_at": 1,
               "size": "1024x1024", "quality": "auto", "background": "auto",
               "output_format": "png"}
    refusal = {"error": {"message": "Your request was rejected by the safety system.",
                         "type": "image_generation_user_error", "param": None,
                         "code": "moderation_blocked"}}
    fakes[0].script("generations", Reply(200, events=[
        f"event: {preview['type']}\ndata: {json.dumps(preview)}\n\n".encode(),
        f"event: error\ndata: {json.dumps(refusal)}\n\n".encode()]))
    with openai_client(provider_stack) as client, pytest.raises(openai.APIError) as caught:
        for _ in client.images.generate(model="gpt-image-2", prompt="x", stream=True,
                                        partial_images=1):
            pass
    assert caught.value.body["code"] == "content_policy_violation"  # type: ignore[index]
