"""Idempotent retries, on SQLite and on PostgreSQL: a retry with the same Idempotency-Key
(gRPC metadata `idempotency-key`) during or after the first attempt gets its answer, from
one upstream call and one usage record, through either door and from another server
process on the same database; the same key with another body is refused."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import grpc
import httpx
import openai
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc
from tests.conftest import DATABASES, GRPC_OPTIONS, ImageHost, database_url, provider_env
from tests.fakes.google_fake import FakeGoogle
from tests.fakes.openai_fake import FakeOpenAI, error
from tests.fakes.server import Reply
from tests.hub import GENERATIONS, Hub, Key
from tests.long_running import long_hub, read_events, wait_for

SLOW = Reply(as_usual=True, delay=1.5)  # the fake's usual answer, after 1.5 s
BODY = {"model": "gpt-image-2", "prompt": "a lighthouse", "n": 2, "response_format": "b64_json"}


@pytest.fixture(scope="module", params=DATABASES)
def providers_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        fake_openai: FakeOpenAI, fake_google: FakeGoogle,
        image_host: ImageHost) -> Iterator[Hub]:
    """The provider stack with an admin key, on SQLite, then on PostgreSQL."""
    var_dir = tmp_path_factory.mktemp(f"idempotency-{request.param}")
    with long_hub(var_dir, provider_env(fake_openai, fake_google, image_host),
                  database_url(request.param, request, var_dir)) as running:
        yield running


@pytest.fixture
def hub(providers_hub: Hub) -> Hub:
    return providers_hub


@pytest.fixture
def key(hub: Hub, fakes) -> Key:
    return hub.create_key(f"idempotency {uuid.uuid4().hex[:6]}")


def rest(hub: Hub, key: Key, idempotency_key: str, **body: object) -> httpx.Response:
    return httpx.post(f"{hub.stack.base_url}{GENERATIONS}", json={**BODY, **body}, timeout=60,
                      headers={**key.headers, "Idempotency-Key": idempotency_key,
                               "x-request-id": uuid.uuid4().hex})


def over_grpc(target: str, key: Key, idempotency_key: str, **fields: object
              ) -> tuple[pb.GenerateResponse, dict[str, str]]:
    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        reply, call = image_service_pb2_grpc.ImageServiceStub(channel).Generate.with_call(
            pb.GenerateRequest(**{**BODY, **fields}), timeout=60,
            metadata=(*key.metadata, ("idempotency-key", idempotency_key)))
    return reply, dict(call.initial_metadata())


def as_json(reply: pb.GenerateResponse) -> dict:
    """A gRPC answer as its REST door writes it (b64_json in base64)."""
    return {"created": reply.created,
            "data": [base64.b64encode(i.b64_json).decode() for i in reply.data]}


def rest_json(answer: httpx.Response) -> dict:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return {"created": body["created"], "data": [i["b64_json"] for i in body["data"]]}


def later(seconds: float, call, *args, **kwargs):  # type: ignore[no-untyped-def]
    """`call` started after `seconds` in a thread; its future."""
    def run():  # type: ignore[no-untyped-def]
        time.sleep(seconds)
        return call(*args, **kwargs)
    return ThreadPoolExecutor(1).submit(run)


def test_a_retry_during_and_after_the_first_attempt_is_answered_once(hub: Hub, key: Key,
                                                                     fakes) -> None:
    fakes[0].script("generations", SLOW)
    idempotency_key = f"retry-{uuid.uuid4()}"

    first = later(0, rest, hub, key, idempotency_key)
    during = later(0.5, over_grpc, hub.stack.server_target, key, idempotency_key)
    first_answer = rest_json(first.result())
    during_reply, during_headers = during.result()
    after = rest(hub, key, idempotency_key)

    assert as_json(during_reply) == first_answer
    assert rest_json(after) == first_answer  # same images, same `created`
    assert after.headers["idempotent-replayed"] == "true"
    assert during_headers["idempotent-replayed"] == "true"
    assert len(fakes[0].requests_to("generations")) == 1
    records = hub.records(key)
    assert [(r["status"], r["images"]) for r in records] == [("OK", 2)]
    assert hub.get_key(key)["images_today"] == 2


def test_the_same_key_with_another_body_is_refused(hub: Hub, key: Key, fakes) -> None:
    idempotency_key = f"reuse-{uuid.uuid4()}"
    assert rest(hub, key, idempotency_key).status_code == 200

    refused = rest(hub, key, idempotency_key, prompt="another lighthouse")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "idempotency_key_reused"
    with pytest.raises(grpc.RpcError) as caught:
        over_grpc(hub.stack.server_target, key, idempotency_key, n=3)
    assert caught.value.code() == grpc.StatusCode.ABORTED
    [info] = [d for d in rpc_status.from_call(caught.value).details
              if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    unpacked = error_details_pb2.ErrorInfo()
    info.Unpack(unpacked)
    assert unpacked.reason == "IDEMPOTENCY_KEY_REUSED"
    # Keys belong to API keys: another key may use the same one for its own request.
    other = hub.create_key("another")
    assert rest(hub, other, idempotency_key, prompt="another lighthouse").status_code == 200
    assert len(fakes[0].requests_to("generations")) == 2


def test_url_answers_are_signed_afresh_on_replay(hub: Hub, key: Key, fakes) -> None:
    idempotency_key = f"url-{uuid.uuid4()}"
    first = rest(hub, key, idempotency_key, response_format="url", n=1)
    time.sleep(1.1)  # a later expiry
    replay = rest(hub, key, idempotency_key, response_format="url", n=1)

    first_url, replay_url = (a.json()["data"][0]["url"] for a in (first, replay))
    assert urlsplit(first_url).path == urlsplit(replay_url).path  # the same stored image
    assert first.json()["created"] == replay.json()["created"]
    assert first_url != replay_url
    assert httpx.get(replay_url).content == httpx.get(first_url).content
    assert len(fakes[0].requests_to("generations")) == 1


def test_a_failed_attempt_is_not_replayed(hub: Hub, key: Key, fakes) -> None:
    fakes[0].script("generations", error(400, "Invalid value.", param="size",
                                         code="invalid_value"))
    idempotency_key = f"fail-{uuid.uuid4()}"
    assert rest(hub, key, idempotency_key).status_code == 400
    assert rest(hub, key, idempotency_key).status_code == 200  # runs afresh
    assert len(fakes[0].requests_to("generations")) == 2
    assert sorted(r["status"] for r in hub.records(key)) == ["OK", "UPSTREAM_INVALID_REQUEST"]


def test_replicas_on_one_database_answer_once(hub: Hub, key: Key, fakes) -> None:
    fakes[0].script("generations", SLOW)
    idempotency_key = f"replicas-{uuid.uuid4()}"
    with hub.stack.replica() as replica:
        first = later(0, over_grpc, replica.target, key, idempotency_key)
        retry = later(0.5, rest, hub, key, idempotency_key)  # Envoy → the first server
        first_reply, _ = first.result()
        assert rest_json(retry.result()) == as_json(first_reply)
    assert len(fakes[0].requests_to("generations")) == 1
    assert len(hub.records(key)) == 1


def test_the_openai_sdk_retries_with_the_key_it_was_given(hub: Hub, key: Key, fakes) -> None:
    """The SDK sends no Idempotency-Key of its own (OpenAI's API takes none); given one in
    `extra_headers`, it sends it with every retry. Its first attempt times out here, and the
    generation goes on without it, so a retry gets that generation's answer."""
    fakes[0].script("generations", SLOW)
    with openai.OpenAI(api_key=key.secret, base_url=hub.stack.api_url, timeout=1.0,
                       max_retries=4) as client:
        result = client.images.generate(
            model="gpt-image-2", prompt="a lighthouse", response_format="b64_json",
            extra_headers={"Idempotency-Key": f"sdk-{uuid.uuid4()}"})
    assert result.data and result.data[0].b64_json
    assert len(fakes[0].requests_to("generations")) == 1
    assert [(r["status"], r["images"]) for r in hub.records(key)] == [("OK", 1)]


def test_a_stream_retry_replays_the_answer_as_events(hub: Hub, key: Key, fakes) -> None:
    idempotency_key = f"stream-{uuid.uuid4()}"
    first = rest(hub, key, idempotency_key, n=1)
    with httpx.stream("POST", f"{hub.stack.base_url}/api/images/generations:stream",
                      json={**BODY, "n": 1, "stream": True}, timeout=60,
                      headers={**key.headers, "Idempotency-Key": idempotency_key}) as answer:
        events = read_events(answer.iter_lines(), time.monotonic())
    assert [e.name for e in events] == ["image_generation.progress",
                                        "image_generation.completed", "image_generation.done"]
    assert events[0].data["stage"] == "replaying"
    assert events[1].data["b64_json"] == first.json()["data"][0]["b64_json"]
    assert len(fakes[0].requests_to("generations")) == 1


def test_a_generation_under_a_key_outlives_its_client(hub: Hub, key: Key, fakes) -> None:
    """A client that goes away does not stop an idempotent generation: its retry gets it."""
    fakes[0].script("generations", SLOW)
    idempotency_key = f"gone-{uuid.uuid4()}"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{hub.stack.base_url}{GENERATIONS}", json=BODY, timeout=0.5,
                   headers={**key.headers, "Idempotency-Key": idempotency_key})
    answer = rest(hub, key, idempotency_key)
    assert answer.status_code == 200 and len(answer.json()["data"]) == 2
    assert len(fakes[0].requests_to("generations")) == 1
    records = wait_for(lambda: hub.records(key), timeout=10)
    assert [(r["status"], r["images"]) for r in records] == [("OK", 2)]


def test_bad_idempotency_keys_are_refused(hub: Hub, key: Key) -> None:
    answer = rest(hub, key, "x" * 300)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "idempotency_key"


@pytest.mark.parametrize(("sent", "then"), [
    ({"model": "gpt-image-2"}, {"model": "gpt-image-2", "n": 1, "size": "1024x1024",
                                "quality": "auto", "output_format": "png", "background": "auto",
                                "moderation": "auto", "response_format": "b64_json"}),
    ({"model": "dall-e-3", "n": 1, "style": "vivid", "quality": "standard"},
     {"model": "dall-e-3"}),
    ({}, {"model": "dall-e-2", "n": 1, "size": "1024x1024", "quality": "standard"}),
])
def test_a_field_left_out_and_its_default_are_one_request(hub: Hub, key: Key, fakes,
                                                          sent: dict, then: dict) -> None:
    """The idempotency fingerprint is taken once defaults are filled in (the contract's,
    per model; no model is the server's default, dall-e-2 here)."""
    idempotency_key = f"defaults-{uuid.uuid4()}"
    headers = {**key.headers, "Idempotency-Key": idempotency_key}
    first = httpx.post(f"{hub.stack.base_url}{GENERATIONS}", timeout=60, headers=headers,
                       json={"prompt": "a lighthouse", **sent})
    assert first.status_code == 200, first.text
    retry = httpx.post(f"{hub.stack.base_url}{GENERATIONS}", timeout=60, headers=headers,
                       json={"prompt": "a lighthouse", **then})
    assert retry.status_code == 200, retry.text
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["created"] == first.json()["created"]
    with grpc.insecure_channel(hub.stack.server_target, options=GRPC_OPTIONS) as channel:
        _, call = image_service_pb2_grpc.ImageServiceStub(channel).Generate.with_call(
            pb.GenerateRequest(prompt="a lighthouse", **then), timeout=60,
            metadata=(*key.metadata, ("idempotency-key", idempotency_key)))
    assert dict(call.initial_metadata())["idempotent-replayed"] == "true"
    # A value that is not the default is another request.
    other = httpx.post(f"{hub.stack.base_url}{GENERATIONS}", timeout=60, headers=headers,
                       json={"prompt": "a lighthouse", **sent, "n": 2})
    assert other.status_code == 409, other.text
