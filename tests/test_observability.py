"""What an operator sees: Prometheus metrics on their own port, one JSON log line per
request carrying the request id end to end, and Envoy's stats on its admin port."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator

import grpc
import httpx
import pytest
import structlog.testing

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc
from service.accounting.charge import Charge
from service.rpc.call import Call
from service.rpc.interceptor import HubInterceptor
from service.rpc.outcome import OK
from tests.conftest import GRPC_AUTH, GRPC_OPTIONS, ImageHost, http_client, provider_env
from tests.fakes.google_fake import FakeGoogle
from tests.fakes.openai_fake import FakeOpenAI, error
from tests.stack import TEST_KEY, Stack

GENERATIONS = "/api/images/generations"
SECRET_PROMPT = "a lighthouse painted by a very private person"


def request_line(stack: Stack, request_id: str) -> dict:
    """The server's log line for one request (an error may reach the client a moment
    before its line is written)."""
    deadline = time.monotonic() + 3
    while True:
        lines = [line for line in stack.log_lines()
                 if line.get("event") == "request" and line.get("request_id") == request_id]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def rest(provider_stack: Stack, fakes) -> Iterator[httpx.Client]:
    with http_client(provider_stack) as client:
        yield client


def test_request_id_travels_from_envoy_to_the_provider_and_back(
        rest: httpx.Client, provider_stack: Stack, fakes) -> None:
    answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": SECRET_PROMPT,
                                          "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text
    request_id = answer.headers["x-request-id"]
    uuid.UUID(request_id)  # made by Envoy, as the client sent none
    assert fakes[0].requests_to("generations")[0].headers["x-request-id"] == request_id

    line = request_line(provider_stack, request_id)
    image_bytes = len(base64.b64decode(answer.json()["data"][0]["b64_json"]))
    assert line["method"] == "GenerateOrStreamHttp" and line["door"] == "rest"
    assert line["status"] == "OK" and line["level"] == "info"
    assert (line["model"], line["served"], line["response_format"]) == (
        "gpt-image-2", "gpt-image-2", "b64_json")
    assert line["key_id"].startswith("key_")
    assert (line["images"], line["image_bytes"]) == (1, image_bytes)
    assert 0 < line["upstream_ms"] <= line["duration_ms"]
    log_text = provider_stack.log_path.read_text()
    assert SECRET_PROMPT not in log_text, "prompts are not logged unless configured"
    assert TEST_KEY not in log_text and FakeOpenAI.api_key not in log_text


def test_a_request_id_the_client_sends_is_kept_on_both_doors(rest: httpx.Client,
                                                             provider_stack: Stack,
                                                             fakes) -> None:
    answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x"},
                       headers={"x-request-id": "client-chosen-id-1"})
    assert answer.headers["x-request-id"] == "client-chosen-id-1"
    assert fakes[0].requests_to("generations")[0].headers["x-request-id"] == "client-chosen-id-1"

    refused = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x", "n": 0},
                        headers={"x-request-id": "client-chosen-id-2"})
    assert refused.status_code == 400
    assert refused.headers["x-request-id"] == "client-chosen-id-2"
    line = request_line(provider_stack, "client-chosen-id-2")
    assert line["status"] == "INTEGER_BELOW_MIN_VALUE" and line["model"] == "gpt-image-2"

    for target in (provider_stack.envoy_target, provider_stack.server_target):
        with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
            _, call = image_service_pb2_grpc.ImageServiceStub(channel).Generate.with_call(
                pb.GenerateRequest(model="gpt-image-2", prompt="x"),
                metadata=(*GRPC_AUTH, ("x-request-id", f"grpc-{target}")), timeout=30)
        assert ("x-request-id", f"grpc-{target}") in tuple(call.initial_metadata())
        assert request_line(provider_stack, f"grpc-{target}")["door"] == "grpc"


@pytest.mark.parametrize("given", ["x" * 500, "has spaces in it", "semi;colon", "é-accent"])
def test_a_request_id_the_server_refuses_is_replaced_by_one_id_end_to_end(
        rest: httpx.Client, provider_stack: Stack, fakes, given: str) -> None:
    """Envoy does not echo an id the server would refuse while the logs and the usage record
    carry another: the client, Envoy's access log, the server's log line and the upstream
    all see the same fresh id."""
    answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x"},
                       headers={"x-request-id": given.encode()})
    assert answer.status_code == 200, answer.text
    fresh = answer.headers["x-request-id"]
    assert fresh != given and len(fresh) == 32, fresh
    assert fakes[0].requests_to("generations")[0].headers["x-request-id"] == fresh
    assert request_line(provider_stack, fresh)["door"] == "rest"
    deadline = time.monotonic() + 10  # Envoy flushes its access log about once a second
    while not [line for line in provider_stack.log_lines()
               if line.get("source") == "envoy" and line.get("request_id") == fresh]:
        assert time.monotonic() < deadline, "no access log line with the fresh id"
        time.sleep(0.1)
    with grpc.insecure_channel(provider_stack.envoy_target, options=GRPC_OPTIONS) as channel:
        _, call = image_service_pb2_grpc.ImageServiceStub(channel).Generate.with_call(
            pb.GenerateRequest(model="gpt-image-2", prompt="x"),
            metadata=(*GRPC_AUTH, ("x-request-id", "x" * 500)), timeout=30)
    ids = [v for k, v in call.initial_metadata() if k == "x-request-id"]
    assert len(set(ids)) == 1 and ids[0] != "x" * 500, ids
    assert request_line(provider_stack, ids[0])["door"] == "grpc"


def test_a_request_id_that_is_not_one_is_replaced(provider_stack: Stack, fakes) -> None:
    with grpc.insecure_channel(provider_stack.server_target) as channel:
        _, call = image_service_pb2_grpc.ImageServiceStub(channel).Generate.with_call(
            pb.GenerateRequest(model="gpt-image-2", prompt="x"),
            metadata=(*GRPC_AUTH, ("x-request-id", "x" * 500)), timeout=30)
    given = dict(call.initial_metadata())["x-request-id"]
    assert len(given) == 32 and fakes[0].requests_to("generations")[0].headers[
        "x-request-id"] == given


def test_metrics_count_requests_latency_images_and_upstream_errors(
        rest: httpx.Client, provider_stack: Stack, fakes) -> None:
    def m(name: str, **labels: str) -> float:
        return provider_stack.metric(name, **labels)

    ok = {"door": "rest", "model": "gpt-image-2", "status": "OK"}
    before = {
        "ok": m("aigne_hub_requests_total", **ok),
        "grpc": m("aigne_hub_requests_total", door="grpc", model="gpt-image-2"),
        "bad": m("aigne_hub_requests_total", status="INTEGER_ABOVE_MAX_VALUE"),
        "latency": m("aigne_hub_request_duration_seconds_count", door="rest",
                     model="gpt-image-2"),
        "upstream": m("aigne_hub_upstream_duration_seconds_count", provider="openai"),
        "images": m("aigne_hub_images_total", model="gpt-image-2", response_format="b64_json"),
        "bytes": m("aigne_hub_image_bytes_total", model="gpt-image-2",
                   response_format="b64_json"),
        "errors": m("aigne_hub_upstream_errors_total", provider="openai", model="gpt-image-2",
                    reason="UPSTREAM_ERROR"),
    }
    answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x", "n": 2,
                                          "response_format": "b64_json"})
    sizes = sum(len(base64.b64decode(d["b64_json"])) for d in answer.json()["data"])
    rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x", "n": 11})
    fakes[0].script("generations", error(500, "boom", kind="server_error"))
    assert rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x",
                                        "response_format": "url"}).status_code == 200
    with grpc.insecure_channel(provider_stack.server_target) as channel:
        image_service_pb2_grpc.ImageServiceStub(channel).Generate(
            pb.GenerateRequest(model="gpt-image-2", prompt="x", response_format="url"),
            metadata=GRPC_AUTH, timeout=30)

    assert m("aigne_hub_requests_total", **ok) == before["ok"] + 2
    assert m("aigne_hub_requests_total", door="grpc", model="gpt-image-2") == before["grpc"] + 1
    assert m("aigne_hub_requests_total", status="INTEGER_ABOVE_MAX_VALUE") == before["bad"] + 1
    assert m("aigne_hub_request_duration_seconds_count", door="rest",
             model="gpt-image-2") == before["latency"] + 3
    assert m("aigne_hub_upstream_duration_seconds_count", provider="openai") == \
        before["upstream"] + 3
    assert m("aigne_hub_images_total", model="gpt-image-2",
             response_format="b64_json") == before["images"] + 2
    assert m("aigne_hub_image_bytes_total", model="gpt-image-2",
             response_format="b64_json") == before["bytes"] + sizes
    assert m("aigne_hub_upstream_errors_total", provider="openai", model="gpt-image-2",
             reason="UPSTREAM_ERROR") == before["errors"] + 1
    assert m("aigne_hub_requests_in_flight") == 0
    assert m("aigne_hub_generations_limit") == 1000  # tests/stack.py's bound
    assert m("aigne_hub_draining") == 0


def test_metric_labels_never_take_what_a_caller_typed(rest: httpx.Client,
                                                      provider_stack: Stack) -> None:
    answer = rest.post(GENERATIONS, json={"model": "no-such-model-" + uuid.uuid4().hex,
                                          "prompt": "x"})
    assert answer.status_code == 404
    assert "no-such-model" not in httpx.get(provider_stack.metrics_url).text


def test_metrics_have_their_own_port_on_the_host_setting(provider_stack: Stack) -> None:
    page = httpx.get(provider_stack.metrics_url)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/plain")
    assert "aigne_hub_request_duration_seconds_bucket" in page.text
    with pytest.raises(httpx.HTTPError):  # not on Envoy's public port
        httpx.get(f"{provider_stack.base_url}/metrics").raise_for_status()


def test_envoy_stats_stay_on_its_admin_port(provider_stack: Stack) -> None:
    stats = httpx.get(f"{provider_stack.envoy_admin_url}/stats/prometheus")
    assert stats.status_code == 200
    assert "envoy_cluster_upstream_rq_total" in stats.text


@pytest.fixture(scope="module")
def prompt_logging_stack(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI,
                         fake_google: FakeGoogle, image_host: ImageHost) -> Iterator[Stack]:
    env = {**provider_env(fake_openai, fake_google, image_host),
           "AIGNE_HUB_LOG_PROMPTS": "true", "AIGNE_HUB_METRICS_PORT": "0"}
    with Stack(tmp_path_factory.mktemp("log-prompts"), env) as running:
        yield running


def test_prompts_are_logged_when_configured(prompt_logging_stack: Stack, fakes) -> None:
    with http_client(prompt_logging_stack) as rest:
        answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": SECRET_PROMPT})
    assert answer.status_code == 200
    line = request_line(prompt_logging_stack, answer.headers["x-request-id"])
    assert line["prompt"] == SECRET_PROMPT
    assert TEST_KEY not in prompt_logging_stack.log_path.read_text()
    with pytest.raises(httpx.HTTPError):  # port 0: no metrics endpoint at all
        httpx.get(prompt_logging_stack.metrics_url, timeout=1)


async def test_the_logged_duration_includes_writing_the_usage_record() -> None:
    """`duration_ms` was taken before the usage record was written (issue 18)."""
    method = "/aigne.hub.v1.ImageService/Generate"
    interceptor = HubInterceptor(None, None, public_methods=frozenset(),  # type: ignore[arg-type]
                                 admin_prefixes=(), metered_methods=frozenset({method}),
                                 request_timeout=10)
    call = Call(charge=Charge(request_id="slow-record", door="rest", accepted_at=time.time()),
                method="Generate", deadline=asyncio.get_running_loop().time() + 10)

    async def slow_record(status: str, http_status: int) -> None:
        await asyncio.sleep(0.3)  # a database that takes its time

    call.charge.settle = slow_record  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logged:
        await interceptor._end(method, call, OK)
    [line] = [entry for entry in logged if entry.get("request_id") == "slow-record"]
    assert line["duration_ms"] >= 300
