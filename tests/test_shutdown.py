"""Graceful shutdown: on SIGTERM the stack finishes what it accepted and refuses new work
cleanly, then exits with Envoy gone too."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc
from tests.conftest import GRPC_AUTH, GRPC_OPTIONS, http_client, provider_env
from tests.fakes.server import Reply
from tests.stack import Stack, wait_until
from tests.test_bad_input import assert_error
from tests.test_end_to_end import assert_images_response

GENERATIONS = "/api/images/generations"
SLOW_SECONDS = 4.0


def start_stack(tmp_path: Path, fakes, **env: str) -> Stack:  # type: ignore[no-untyped-def]
    return Stack(tmp_path, {**provider_env(*fakes), **env}).start()


def test_sigterm_finishes_requests_in_flight_and_refuses_new_ones(tmp_path: Path, fakes) -> None:
    fake_openai = fakes[0]
    stack = start_stack(tmp_path, fakes, AIGNE_HUB_SHUTDOWN_GRACE_SECONDS="20")
    try:
        fake_openai.script("generations", fake_openai.success(delay=SLOW_SECONDS),
                           fake_openai.success(delay=SLOW_SECONDS))
        answers: dict[str, object] = {}

        def slow_rest() -> None:
            with http_client(stack) as rest:
                answers["rest"] = rest.post(GENERATIONS, json={
                    "model": "gpt-image-2", "prompt": "slow", "response_format": "b64_json"})

        def slow_grpc() -> None:
            with grpc.insecure_channel(stack.envoy_target, options=GRPC_OPTIONS) as channel:
                answers["grpc"] = image_service_pb2_grpc.ImageServiceStub(channel).Generate(
                    pb.GenerateRequest(model="gpt-image-2", prompt="slow"),
                    metadata=GRPC_AUTH, timeout=60)

        threads = [threading.Thread(target=slow_rest), threading.Thread(target=slow_grpc)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(fake_openai.requests_to("generations")) == 2)
        assert stack.process is not None
        signalled = time.monotonic()
        stack.process.send_signal(signal.SIGTERM)

        # New work is refused at once, in JSON, with Retry-After, on both doors.
        with http_client(stack) as rest:
            wait_until(lambda: rest.get("/readyz").status_code == 503, timeout=3)
            refused = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "late"})
        assert_error(refused, 503, None, "shutting_down")
        assert refused.headers["retry-after"] == "1"
        with grpc.insecure_channel(stack.server_target) as channel, \
                pytest.raises(grpc.RpcError) as caught:
            image_service_pb2_grpc.ImageServiceStub(channel).Generate(
                pb.GenerateRequest(model="gpt-image-2", prompt="late"), metadata=GRPC_AUTH,
                timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(fake_openai.requests_to("generations")) == 2, "refused before the provider"

        # What was accepted before the signal completes, through the draining Envoy.
        for thread in threads:
            thread.join(timeout=30)
        rest_answer = answers["rest"]
        assert isinstance(rest_answer, httpx.Response)
        assert rest_answer.status_code == 200, rest_answer.text
        assert_images_response(rest_answer.json(), 1)
        grpc_answer = answers["grpc"]
        assert isinstance(grpc_answer, pb.GenerateResponse) and len(grpc_answer.data) == 1

        # Then both processes exit, well within the grace period.
        assert stack.process.wait(timeout=20) == 0
        assert time.monotonic() - signalled < 15
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{stack.envoy_admin_url}/ready", timeout=1)
        events = [line.get("event") for line in stack.log_lines()]
        assert "draining" in events and "stopped" in events
    finally:
        stack.stop()


def test_a_request_longer_than_the_grace_period_is_cut_and_the_stack_still_exits(
        tmp_path: Path, fakes) -> None:
    fake_openai = fakes[0]
    stack = start_stack(tmp_path, fakes, AIGNE_HUB_SHUTDOWN_GRACE_SECONDS="1")
    try:
        fake_openai.script("generations", Reply(hang=True))
        outcome: list[object] = []

        def endless() -> None:
            try:
                with http_client(stack) as rest:
                    outcome.append(rest.post(GENERATIONS, json={"model": "gpt-image-2",
                                                                "prompt": "endless"}))
            except httpx.HTTPError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=endless)
        thread.start()
        wait_until(lambda: len(fake_openai.requests_to("generations")) == 1)
        assert stack.process is not None
        signalled = time.monotonic()
        stack.process.send_signal(signal.SIGTERM)
        assert stack.process.wait(timeout=20) == 0
        assert time.monotonic() - signalled < 10
        thread.join(timeout=10)
        assert outcome, "the client was answered or disconnected, not left hanging"
        if isinstance(outcome[0], httpx.Response):
            assert outcome[0].status_code >= 500
            assert "error" in outcome[0].json()
        assert fake_openai.wait_for_disconnect("generations"), "the upstream call was cancelled"
    finally:
        stack.stop()
