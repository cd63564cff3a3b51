"""Back-pressure: past its bound of generations in flight, the server refuses at once with
a JSON 503 and Retry-After, and takes work again as soon as a slot frees."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc
from tests.conftest import GRPC_AUTH, ImageHost, http_client, provider_env
from tests.fakes.google_fake import FakeGoogle
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Reply
from tests.stack import Stack, wait_until
from tests.test_bad_input import assert_error

GENERATIONS = "/api/images/generations"
LIMIT = 2


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI,
                fake_google: FakeGoogle, image_host: ImageHost) -> Iterator[Stack]:
    env = {**provider_env(fake_openai, fake_google, image_host),
           "AIGNE_HUB_MAX_IN_FLIGHT_GENERATIONS": str(LIMIT)}
    with Stack(tmp_path_factory.mktemp("small"), env) as running:
        yield running


def test_past_the_limit_callers_get_a_fast_503_with_retry_after(small_stack: Stack,
                                                                 fakes) -> None:
    fake_openai = fakes[0]
    fake_openai.script("generations", *[fake_openai.success(delay=3) for _ in range(LIMIT)])
    slow: list[httpx.Response] = []

    def generate() -> None:
        with http_client(small_stack) as rest:
            slow.append(rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "slow"}))

    threads = [threading.Thread(target=generate) for _ in range(LIMIT)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(fake_openai.requests_to("generations")) == LIMIT)
    assert small_stack.metric("aigne_hub_generations_in_flight") == LIMIT

    with http_client(small_stack) as rest:
        started = time.monotonic()
        refused = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "one more"})
        took = time.monotonic() - started
        body = assert_error(refused, 503, None, "overloaded")
        assert refused.headers["retry-after"] == "1"
        assert str(LIMIT) in body["message"]
        assert took < 0.5, "refused at once, not queued"
        # Requests that generate nothing are not held back.
        assert rest.get("/api/models").status_code == 200
        assert rest.get("/readyz").status_code == 200
    with grpc.insecure_channel(small_stack.server_target) as channel, \
            pytest.raises(grpc.RpcError) as caught:
        image_service_pb2_grpc.ImageServiceStub(channel).Generate(
            pb.GenerateRequest(model="gpt-image-2", prompt="one more"), metadata=GRPC_AUTH,
            timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ("retry-after", "1") in tuple(caught.value.trailing_metadata() or ())

    for thread in threads:
        thread.join(timeout=30)
    assert [answer.status_code for answer in slow] == [200] * LIMIT
    assert len(fake_openai.requests_to("generations")) == LIMIT, "refused before the provider"
    with http_client(small_stack) as rest:
        again = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "now"})
    assert again.status_code == 200, again.text
    assert small_stack.metric("aigne_hub_generations_in_flight") == 0


def test_slots_are_given_back_when_calls_fail_or_are_cancelled(small_stack: Stack,
                                                              fakes) -> None:
    fake_openai = fakes[0]
    fake_openai.script("generations", *[Reply(hang=True) for _ in range(LIMIT)])
    with grpc.insecure_channel(small_stack.server_target) as channel:
        stub = image_service_pb2_grpc.ImageServiceStub(channel)
        for _ in range(LIMIT):  # the client gives up: the server cancels the upstream call
            with pytest.raises(grpc.RpcError):
                stub.Generate(pb.GenerateRequest(model="gpt-image-2", prompt="hang"),
                              metadata=GRPC_AUTH, timeout=0.5)
        for _ in range(LIMIT + 1):  # failures of every kind
            with pytest.raises(grpc.RpcError):
                stub.Generate(pb.GenerateRequest(model="gpt-image-2", prompt="x", n=99),
                              metadata=GRPC_AUTH, timeout=10)
    wait_until(lambda: small_stack.metric("aigne_hub_generations_in_flight") == 0)
    with http_client(small_stack) as rest:
        answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "after"})
    assert answer.status_code == 200, answer.text
