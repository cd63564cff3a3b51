"""Traces with real parts: one OpenTelemetry trace per request, Envoy's spans and the
server's, exported to a real OTLP receiver on 127.0.0.1 (gRPC and HTTP), continuing the
caller's `traceparent` and passing it to the providers; nothing at all when unset."""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc
from service.config import Settings
from service.ops import envoy, envoy_edges, tracing
from tests.conftest import GRPC_AUTH, GRPC_OPTIONS, ImageHost
from tests.edges import GENERATIONS, PROMPT, SERVICE, Edge, edge_stack, request_line, spans_of  # noqa: F401  (the fixture)
from tests.fakes.google_fake import FakeGoogle
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.otlp import Collector, Span
from tests.stack import TEST_KEY, Stack


def test_one_trace_per_request_from_the_caller_through_envoy_and_the_server_to_the_provider(
        edge: Edge, fake_openai: FakeOpenAI) -> None:
    fake_openai.clear()
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    answer = httpx.post(
        f"{edge.stack.base_url}{GENERATIONS}", verify=edge.verify(), timeout=60,
        headers={"Authorization": f"Bearer {TEST_KEY}",
                 "traceparent": f"00-{trace_id}-{caller_span}-01"},
        json={"model": "gpt-image-2", "prompt": PROMPT, "response_format": "url"})
    assert answer.status_code == 200, answer.text
    steps = ("auth", "quota reserve", "generate_content gpt-image-2", "image store",
             "usage record")
    spans = spans_of(edge, trace_id, *steps)
    by_id = {s.span_id: s for s in spans}
    [ingress] = [s for s in spans if s.service == f"{SERVICE}-envoy" and s.parent_id == caller_span]
    [rpc] = [s for s in spans if s.attributes.get("rpc.method") == "GenerateOrStreamHttp"]
    assert rpc.service == SERVICE and by_id[rpc.parent_id].service == f"{SERVICE}-envoy"
    assert rpc.attributes["rpc.service"] == "aigne.hub.v1.ImageService"
    attempt = next(s for s in spans if s.name == "generate_content gpt-image-2")
    assert attempt.attributes["gen_ai.request.model"] == "gpt-image-2"
    assert attempt.attributes["aigne.hub.upstream.outcome"] == "OK"
    assert attempt.attributes["aigne.hub.retry"] == 0
    # The SDK's HTTP call is the attempt's child, and its traceparent reached the provider.
    [upstream_call] = [s for s in spans if s.parent_id == attempt.span_id]
    [received] = fake_openai.requests_to("generations")
    assert received.headers["traceparent"].split("-")[1:3] == [trace_id, upstream_call.span_id]
    for span in spans:  # every server span descends from Envoy's ingress span
        while span.parent_id in by_id:
            span = by_id[span.parent_id]
        assert span.span_id == ingress.span_id
    assert PROMPT not in repr(spans) and TEST_KEY not in repr(spans)
    line = request_line(edge.stack, answer.headers["x-request-id"])
    assert line["trace_id"] == trace_id and line["span_id"] == rpc.span_id


def test_the_google_sdk_s_call_carries_the_traceparent_too(
        edge: Edge, fake_google: FakeGoogle) -> None:
    fake_google.clear()
    trace_id = secrets.token_hex(16)
    answer = httpx.post(
        f"{edge.stack.base_url}{GENERATIONS}", verify=edge.verify(), timeout=60,
        headers={"Authorization": f"Bearer {TEST_KEY}",
                 "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        json={"model": "gemini-3.1-flash-image", "prompt": PROMPT, "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text
    [received] = fake_google.received
    assert received.headers["traceparent"].split("-")[1] == trace_id
    spans = spans_of(edge, trace_id, "generate_content gemini-3.1-flash-image")
    attempt = next(s for s in spans if s.name.startswith("generate_content"))
    assert attempt.attributes["gen_ai.provider.name"] == "gemini"
    assert any(s.parent_id == attempt.span_id for s in spans)  # the SDK's HTTP call


def test_a_grpc_call_without_traceparent_starts_its_trace_at_envoy(edge: Edge) -> None:
    credentials = grpc.ssl_channel_credentials(edge.ca.cert.read_bytes())
    with grpc.secure_channel(edge.stack.envoy_target, credentials, GRPC_OPTIONS) as channel:
        _, call = image_service_pb2_grpc.ImageServiceStub(channel).Generate.with_call(
            pb.GenerateRequest(prompt=PROMPT, model="local", size="256x256",
                               response_format="b64_json"), metadata=GRPC_AUTH, timeout=60)
    request_id = dict(call.initial_metadata())["x-request-id"]
    trace_id = request_line(edge.stack, request_id)["trace_id"]
    spans = spans_of(edge, trace_id, "auth", "quota reserve", "usage record")
    [root] = [s for s in spans if not s.parent_id]
    assert root.service == f"{SERVICE}-envoy"
    [rpc] = [s for s in spans if s.attributes.get("rpc.method") == "Generate"]
    assert rpc.service == SERVICE


def test_a_stream_over_tls_is_traced_as_one_call(edge: Edge) -> None:
    trace_id = secrets.token_hex(16)
    with httpx.stream("POST", f"{edge.stack.base_url}{GENERATIONS}:stream", timeout=60,
                      verify=edge.verify(),
                      headers={"Authorization": f"Bearer {TEST_KEY}",
                               "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
                      json={"model": "local", "prompt": PROMPT, "size": "256x256"}) as answer:
        assert answer.status_code == 200
        lines = list(answer.iter_lines())
    events = [line for line in lines if line.startswith("event: ")]
    assert events[-1] == "event: image_generation.done"
    completed = next(line for line in lines if '"image_generation.completed"' in line)
    assert f'"url":"https://127.0.0.1:{edge.port}/api/images/files/' in completed
    spans = spans_of(edge, trace_id, "auth", "quota reserve", "image store", "usage record")
    [rpc] = [s for s in spans if s.kind == 2 and s.service == SERVICE]
    assert "Stream" in rpc.attributes["rpc.method"]


def test_a_background_job_runs_in_one_trace_of_its_own(edge: Edge) -> None:
    created = httpx.post(f"{edge.stack.base_url}/api/images/jobs", verify=edge.verify(),
                         headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=60,
                         json={"model": "local", "prompt": PROMPT, "size": "256x256"})
    assert created.status_code == 200, created.text
    job_id = created.json()["job"]["id"]

    def job_span() -> list[Span]:
        return [s for s in edge.collector.spans if s.name == "job"
                and s.attributes.get("aigne.hub.job_id") == job_id]
    edge.collector.wait_for(lambda: bool(job_span()) and {"image store", "generate_content local"}
                            <= {s.name for s in edge.collector.trace(job_span()[0].trace_id)})
    [job] = job_span()
    steps = edge.collector.trace(job.trace_id)
    assert all(s.parent_id for s in steps if s is not job)  # nothing left as a root of its own


def test_otlp_over_http_the_default_protocol_reaches_the_collector_from_both(
        tmp_path: Path) -> None:
    collector = Collector().start()
    try:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.http_endpoint,
               "OTEL_SERVICE_NAME": "hub-http"}
        with Stack(tmp_path / "var", env) as stack:
            trace_id = secrets.token_hex(16)
            answer = httpx.post(
                f"{stack.api_url}/images/generations", timeout=60,
                headers={"Authorization": f"Bearer {TEST_KEY}",
                         "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
                json={"model": "local", "prompt": PROMPT, "size": "256x256"})
            assert answer.status_code == 200, answer.text
            collector.wait_for(lambda: {"hub-http", "hub-http-envoy"} <= {
                s.service for s in collector.trace(trace_id)})
    finally:
        collector.stop()


def test_unset_otel_variables_mean_no_sdk_and_a_plain_untraced_envoy(tmp_path: Path) -> None:
    """The defaults: no exporter, no tracer provider (the API's no-op one stays), no tracer
    or collector in Envoy's config, no TLS anywhere."""
    settings = Settings(var_dir=tmp_path)
    assert tracing.start(settings) is None
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    config = envoy.render(settings)
    for absent in ("envoy.tracers.opentelemetry", "otel_collector", "transport_socket"):
        assert absent not in config
    assert settings.public_base.startswith("http://")


def test_sampler_settings_follow_opentelemetry_s_variables() -> None:
    ratio = Settings(otel_exporter_otlp_endpoint="http://collector:4318",
                     otel_traces_sampler="parentbased_traceidratio", otel_traces_sampler_arg=0.25)
    assert tracing.sampler(ratio).get_description() == (
        "ParentBased{root:TraceIdRatioBased{0.25},remoteParentSampled:AlwaysOnSampler,"
        "remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,"
        "localParentNotSampled:AlwaysOffSampler}")
    assert envoy_edges.sampling_percent(ratio) == 25.0
    config = yaml.safe_load(envoy.render(ratio))  # OTLP/HTTP: Envoy's http_service
    [hcm] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    provider = hcm["typed_config"]["tracing"]["provider"]["typed_config"]
    assert provider["http_service"]["http_uri"]["uri"] == "http://collector:4318/v1/traces"
    collector = config["static_resources"]["clusters"][-1]
    address = collector["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert address["address"]["socket_address"] == {"address": "collector", "port_value": 4318}
    with pytest.raises(ValueError, match="go together"):
        Settings(tls_cert_file=Path("tls.crt"))


def test_a_signed_url_s_signature_stays_out_of_the_trace(edge: Edge) -> None:
    made = httpx.post(f"{edge.stack.base_url}{GENERATIONS}", verify=edge.verify(), timeout=60,
                      headers={"Authorization": f"Bearer {TEST_KEY}"},
                      json={"model": "local", "prompt": PROMPT, "size": "256x256",
                            "response_format": "url"})
    url = made.json()["data"][0]["url"]
    trace_id = secrets.token_hex(16)
    image = httpx.get(url, verify=edge.verify(),
                      headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    assert image.status_code == 200  # the server still got the signature
    spans = spans_of(edge, trace_id)
    [ingress] = [s for s in spans if s.service == f"{SERVICE}-envoy"]
    assert ingress.attributes["http.url"].endswith(url.split("?")[0].split("/")[-1])
    assert "signature" not in repr(spans) and url.split("signature=")[1] not in repr(spans)


def test_outgoing_calls_are_traced_without_their_query(
        edge: Edge, image_host: ImageHost) -> None:
    """A source image given as a presigned URL: its fetch is a span, its signature is not
    in it (nor in the trace at all)."""
    trace_id = secrets.token_hex(16)
    source = f"{image_host.url}/300x200.png?X-Amz-Signature=topsecret&X-Amz-Expires=60"
    answer = httpx.post(
        f"{edge.stack.base_url}{GENERATIONS}", verify=edge.verify(), timeout=60,
        headers={"Authorization": f"Bearer {TEST_KEY}",
                 "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        json={"model": "gpt-image-2", "prompt": PROMPT, "image": source,
              "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text
    spans_of(edge, trace_id, "generate_content gpt-image-2")
    edge.collector.wait_for(lambda: any(
        f"{image_host.url}/300x200.png" in repr(s.attributes)
        for s in edge.collector.trace(trace_id)))
    spans = edge.collector.trace(trace_id)
    assert "topsecret" not in repr(spans)
