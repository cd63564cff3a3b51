"""Streams: StreamGenerate over gRPC (through Envoy and directly) and its Server-Sent Events
door through Envoy, against the fake OpenAI streaming gpt-image-2 as the real API does:
progress, partial images, each finished image as soon as it is stored, then usage."""

from __future__ import annotations

import base64
import itertools
import time
import uuid
from collections.abc import Iterator

import grpc
import httpx
import openai
import pytest

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc
from tests.conftest import (
    GRPC_AUTH,
    ImageHost,
    http_client,
    open_image,
    provider_env,
)
from tests.fakes.google_fake import FakeGoogle
from tests.fakes.images import picture
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Reply
from tests.hub import Hub
from tests.long_running import Event, long_hub, read_events, wait_for
from tests.stack import TEST_KEY, Stack
from tests.test_bad_input import assert_error

STREAM = "/api/images/generations:stream"


def sse(client: httpx.Client, body: dict, path: str = STREAM,
        headers: dict[str, str] | None = None) -> tuple[httpx.Response, list[Event]]:
    started = time.monotonic()
    with client.stream("POST", path, json=body, headers=headers) as answer:
        if answer.status_code != 200:
            answer.read()
            return answer, []
        return answer, read_events(answer.iter_lines(), started)


def test_grpc_stream_sends_progress_partials_images_then_usage(provider_stub, fakes) -> None:
    request = pb.GenerateRequest(model="gpt-image-2", prompt="a fox", n=2, partial_images=2,
                                 response_format="b64_json", size="1024x1536")
    call = provider_stub.StreamGenerate(pb.StreamGenerateRequest(request=request),
                                        metadata=GRPC_AUTH, timeout=60)
    events = list(call)

    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "progress" and kinds[-1] == "done"
    assert kinds.count("partial_image") == 4 and kinds.count("image") == 2
    first = events[0].progress
    assert (first.stage, first.n, first.model, first.size) == ("generating", 2, "gpt-image-2",
                                                               "1024x1536")
    for index in (0, 1):
        partials = [i for i, e in enumerate(events) if e.WhichOneof("event") == "partial_image"
                    and e.partial_image.index == index]
        [image_at] = [i for i, e in enumerate(events)
                      if e.WhichOneof("event") == "image" and e.image.index == index]
        assert partials and max(partials) < image_at, "previews come before their image"
        assert [events[i].partial_image.partial_image_index for i in partials] == [0, 1]
        assert open_image(events[partials[0]].partial_image.b64_json).size == (1024, 1536)
        assert open_image(events[image_at].image.image.b64_json).size == (1024, 1536)
    done = events[-1].done
    assert done.images == 2 and done.usage.output_tokens > 0 and done.created == first.created
    assert ("x-model-served", "gpt-image-2") in tuple(call.initial_metadata())
    sent = [r.json for r in fakes[0].requests_to("generations")]
    assert len(sent) == 2 and all(s["stream"] is True and s["partial_images"] == 2
                                  and s["n"] == 1 for s in sent)


def usage_record(client: httpx.Client, request_id: str) -> dict:
    """The usage record of one of the test key's requests (a key reads its own)."""
    [record] = client.get("/api/usage/records", params={"request_id": request_id}).json()[
        "records"]
    return record


def test_sse_stream_through_envoy_arrives_as_it_happens(provider_stack: Stack, fakes) -> None:
    request_id = uuid.uuid4().hex
    with http_client(provider_stack) as client:
        answer, events = sse(client, {"model": "gpt-image-2", "prompt": "a fox",
                                      "partial_images": 3, "response_format": "url"},
                                 headers={"x-request-id": request_id})
        record = usage_record(client, request_id)

    assert answer.headers["content-type"] == "text/event-stream"
    assert answer.headers["x-model-served"] == "gpt-image-2"
    names = [e.name for e in events]
    assert names == (["image_generation.progress"] + ["image_generation.partial_image"] * 3
                     + ["image_generation.completed", "image_generation.done"])
    assert all(e.data["type"] == e.name for e in events)
    partial, completed, done = events[1].data, events[4].data, events[5].data
    assert (partial["index"], partial["partial_image_index"], partial["size"]) == (0, 0,
                                                                                   "1024x1024")
    open_image(base64.b64decode(partial["b64_json"]))
    url = completed["url"]  # response_format url: stored before the event is sent
    assert open_image(httpx.get(url).content).size == (1024, 1024)
    assert done["usage"]["output_tokens"] > 0 and type(done["created"]) is int
    # Incremental: the fake waits 0.15 s between its events, and so do ours.
    assert events[-1].at - events[1].at > 0.3
    assert (record["status"], record["images"], record["door"]) == ("OK", 1, "rest")


def test_a_client_that_leaves_a_stream_cancels_the_upstream(provider_stack: Stack,
                                                            fakes) -> None:
    fakes[0].script("generations", Reply(hang=True))
    asked_before = len(fakes[0].requests_to("generations"))
    request_id = uuid.uuid4().hex
    with grpc.insecure_channel(provider_stack.envoy_target) as channel:
        call = image_service_pb2_grpc.ImageServiceStub(channel).StreamGenerate(
            pb.StreamGenerateRequest(request=pb.GenerateRequest(model="gpt-image-2", prompt="x")),
            metadata=(*GRPC_AUTH, ("x-request-id", request_id)), timeout=60)
        assert next(call).WhichOneof("event") == "progress"
        # The progress event may leave before the upstream call does: leave once it is made.
        wait_for(lambda: len(fakes[0].requests_to("generations")) > asked_before)
        call.cancel()
    assert fakes[0].wait_for_disconnect("generations")
    with http_client(provider_stack) as client:
        record = wait_for(lambda: client.get("/api/usage/records", params={
            "request_id": request_id}).json().get("records"))
    assert [(r["status"], r["images"]) for r in record] == [("CANCELLED", 0)]


def test_openai_sdk_streams_from_the_stream_base_url(provider_stack: Stack, fakes) -> None:
    with openai.OpenAI(api_key=TEST_KEY, base_url=f"{provider_stack.api_url}/stream",
                       max_retries=0) as client:
        events = list(client.images.generate(model="gpt-image-2", prompt="a fox", stream=True,
                                             partial_images=1, response_format="b64_json"))

    by_type = {e.type: e for e in events}
    assert isinstance(by_type["image_generation.partial_image"],
                      openai.types.ImageGenPartialImageEvent)
    completed = by_type["image_generation.completed"]
    assert isinstance(completed, openai.types.ImageGenCompletedEvent)
    assert open_image(base64.b64decode(completed.b64_json)).size == (1024, 1024)


def test_an_edit_streams_image_edit_events(provider_stack: Stack, fakes) -> None:
    source = base64.b64encode(picture(640, 480)).decode()
    with http_client(provider_stack) as client:
        _, events = sse(client, {"model": "gpt-image-2", "prompt": "add a hat", "image": source,
                                 "partial_images": 1, "response_format": "b64_json"})
    assert [e.name for e in events] == ["image_edit.progress", "image_edit.partial_image",
                                        "image_edit.completed", "image_edit.done"]
    assert fakes[0].requests_to("edits")[0].fields["stream"] == ["true"]


def test_models_without_previews_stream_their_images(provider_stack: Stack, fakes,
                                                     provider_stub) -> None:
    events = list(provider_stub.StreamGenerate(pb.StreamGenerateRequest(request=pb.GenerateRequest(
        model="local", prompt="a fox", n=3, size="64x64", partial_images=2)),
        metadata=GRPC_AUTH, timeout=60))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["progress", "image", "image", "image", "done"]
    assert sorted(e.image.index for e in events if e.HasField("image")) == [0, 1, 2]


def test_errors_before_the_first_event_are_http_and_grpc_errors(provider_stack: Stack, fakes,
                                                                provider_stub) -> None:
    with http_client(provider_stack) as client:
        answer, _ = sse(client, {"model": "gpt-image-2", "prompt": "x", "n": 11})
        assert_error(answer, 400, "n", "integer_above_max_value")
        answer, _ = sse(client, {"model": "gpt-image-2", "prompt": "x", "partial_images": 4})
        assert_error(answer, 400, "partial_images")
        nobody = client.post(STREAM, json={"prompt": "x"}, headers={"authorization": ""})
        assert_error(nobody, 401, None)
    with pytest.raises(grpc.RpcError) as caught:
        list(provider_stub.StreamGenerate(pb.StreamGenerateRequest(request=pb.GenerateRequest(
            model="gpt-image-2", prompt="x", n=11)), metadata=GRPC_AUTH, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fakes[0].received == []


def test_an_error_after_the_first_event_is_an_error_event(provider_stack: Stack, fakes,
                                                          provider_stub) -> None:
    broken = Reply(500, json={"error": {"message": "The server had an error", "type":
                                        "server_error", "param": None, "code": None}})
    fakes[0].script("generations", broken, broken, broken, broken, broken, broken)
    with http_client(provider_stack) as client:
        answer, events = sse(client, {"model": "gpt-image-2", "prompt": "x"})
    assert answer.status_code == 200
    assert [e.name for e in events] == ["image_generation.progress", "error"]
    assert events[-1].data["error"]["code"] == "upstream_error"
    assert events[-1].data["error"]["http_status"] == 502

    call = provider_stub.StreamGenerate(pb.StreamGenerateRequest(request=pb.GenerateRequest(
        model="gpt-image-2", prompt="x")), metadata=GRPC_AUTH, timeout=30)
    received = []
    with pytest.raises(grpc.RpcError) as caught:
        for event in call:
            received.append(event.WhichOneof("event"))
    assert received == ["progress"]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_generate_refuses_stream_true(provider_rest: httpx.Client, provider_stub) -> None:
    """Generate answers once; over REST `stream: true` streams OpenAI's way
    (tests/test_openai_streams.py), but previews still need a stream."""
    with pytest.raises(grpc.RpcError) as refused:
        provider_stub.Generate(pb.GenerateRequest(model="gpt-image-2", prompt="x", stream=True),
                               metadata=GRPC_AUTH, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "StreamGenerate" in (refused.value.details() or "")
    assert_error(provider_rest.post("/api/images/generations", json={
        "model": "gpt-image-2", "prompt": "x", "partial_images": 2}), 400, "partial_images")


def test_models_listing_says_which_models_stream_previews(provider_rest: httpx.Client) -> None:
    models = {m["id"]: m for m in provider_rest.get("/api/models").json()["data"]}
    assert models["gpt-image-2"]["partial_images"] is True
    assert models["dall-e-3"]["partial_images"] is True  # served by gpt-image-2
    assert models["local"]["partial_images"] is False


@pytest.fixture(scope="module")
def quick_heartbeat(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI,
                    fake_google: FakeGoogle, image_host: ImageHost) -> Iterator[Hub]:
    """A stack whose quiet streams repeat their progress every 0.5 s."""
    var_dir = tmp_path_factory.mktemp("heartbeat")
    with long_hub(var_dir, provider_env(fake_openai, fake_google, image_host),
                  f"sqlite+aiosqlite:///{var_dir / 'hub.db'}") as running:
        yield running


def test_a_quiet_stream_repeats_its_progress(quick_heartbeat: Hub, fakes) -> None:
    """While the upstream works without a word, the stream is not quiet: proxies with short
    idle timeouts keep it."""
    fakes[0].script("generations", Reply(as_usual=True, delay=2.0))
    with httpx.Client(base_url=quick_heartbeat.stack.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {TEST_KEY}"}) as client:
        _, events = sse(client, {"model": "gpt-image-2", "prompt": "a slow fox",
                                  "response_format": "url"})
    names = [e.name for e in events]
    assert names[-2:] == ["image_generation.completed", "image_generation.done"]
    progress = [e for e in events if e.name == "image_generation.progress"]
    assert len(progress) >= 3
    assert max(b.at - a.at for a, b in itertools.pairwise(events)) < 1.5
    assert progress[-1].data["images_done"] == 0 and progress[-1].data["stage"] == "generating"


def test_upstream_stream_error_event_is_mapped(provider_stack: Stack, fakes) -> None:
    refusal = Reply(200, events=[
        b'event: error\ndata: {"error": {"message": "Your request was rejected by the safety '
        b'system.", "type": "image_generation_user_error", "param": null, '
        b'"code": "moderation_blocked"}}\n\n'])
    fakes[0].script("generations", refusal)
    with http_client(provider_stack) as client:
        _, events = sse(client, {"model": "gpt-image-2", "prompt": "x", "partial_images": 1})
    assert events[-1].name == "error"
    assert events[-1].data["error"]["code"] == "content_policy_violation"
    assert len(fakes[0].requests_to("generations")) == 1, "refusals are not retried"
