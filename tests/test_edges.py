"""Production edges, with real parts: TLS at Envoy (a CA made here; the openai SDK, the
generated gRPC stub and curl as clients; plaintext refused; a renewed certificate served
without a restart; client certificates when asked for), mTLS from Envoy to the server, and
one OpenTelemetry trace per request, Envoy's spans and the server's, exported to a real
OTLP receiver, continuing the caller's `traceparent` and passing it to the provider."""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import openai
import pytest
import yaml
from cryptography import x509
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc
from service.config import Settings
from service.ops import envoy, envoy_edges, tracing
from tests.certs import CertificateAuthority, Issued
from tests.conftest import GRPC_AUTH, GRPC_OPTIONS, ImageHost, provider_env
from tests.fakes.google_fake import FakeGoogle
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.otlp import Collector, Span
from tests.stack import TEST_KEY, Stack

PROMPT = "a lighthouse that nobody else may read about"
SERVICE = "aigne-hub-images"
GENERATIONS = "/api/images/generations"


@dataclass
class Edge:
    stack: Stack
    collector: Collector
    ca: CertificateAuthority
    tls_dir: Path  # laid out as Kubernetes mounts a TLS Secret: tls.crt -> ..data/tls.crt
    envoy_client: Issued  # Envoy's client certificate to the server

    @property
    def port(self) -> int:
        return self.stack.http_port

    def verify(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.cert))


def mount_secret(ca: CertificateAuthority, tls_dir: Path, version: str) -> Issued:
    """A new edge certificate in `tls_dir`, swapped in as the kubelet does: files in a fresh
    directory, then the `..data` link renamed over the old one (one move, atomic)."""
    ca.issue("tls", into=tls_dir / f"..{version}")
    (tls_dir / "..data_tmp").symlink_to(f"..{version}")
    os.replace(tls_dir / "..data_tmp", tls_dir / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (tls_dir / name).is_symlink():
            (tls_dir / name).symlink_to(f"..data/{name}")
    return Issued(tls_dir / "tls.crt", tls_dir / "tls.key")


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI,
         fake_google: FakeGoogle, image_host: ImageHost) -> Iterator[Edge]:
    """A stack serving TLS at Envoy, mTLS between Envoy and the server, traced to a
    collector on 127.0.0.1."""
    root = tmp_path_factory.mktemp("edges")
    ca = CertificateAuthority(root / "ca")
    tls_dir = root / "tls"
    tls_dir.mkdir()
    edge_cert = mount_secret(ca, tls_dir, "2026_12_06_first")
    server, envoy = ca.issue("server"), ca.issue("envoy", client=True)
    collector = Collector().start()
    env = {**provider_env(fake_openai, fake_google, image_host),
           "AIGNE_HUB_TLS_CERT_FILE": str(edge_cert.cert),
           "AIGNE_HUB_TLS_KEY_FILE": str(edge_cert.key),
           "AIGNE_HUB_UPSTREAM_TLS_CERT_FILE": str(server.cert),
           "AIGNE_HUB_UPSTREAM_TLS_KEY_FILE": str(server.key),
           "AIGNE_HUB_UPSTREAM_TLS_CLIENT_CERT_FILE": str(envoy.cert),
           "AIGNE_HUB_UPSTREAM_TLS_CLIENT_KEY_FILE": str(envoy.key),
           "AIGNE_HUB_UPSTREAM_TLS_CA_FILE": str(ca.cert),
           "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
           "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
           "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.0"}
    credentials = grpc.ssl_channel_credentials(
        ca.cert.read_bytes(), envoy.key.read_bytes(), envoy.cert.read_bytes())
    try:
        with Stack(root / "var", env, server_credentials=credentials) as stack:
            yield Edge(stack, collector, ca, tls_dir, envoy)
    finally:
        collector.stop()


def sdk(edge: Edge) -> openai.OpenAI:
    return openai.OpenAI(api_key=TEST_KEY, base_url=edge.stack.api_url, max_retries=0,
                         http_client=openai.DefaultHttpxClient(verify=edge.verify()))


def test_the_openai_sdk_reaches_the_service_over_tls_and_signed_urls_are_https(
        edge: Edge) -> None:
    with sdk(edge) as client:
        result = client.images.generate(prompt=PROMPT, model="local", size="256x256",
                                        response_format="url")
    url = result.data[0].url
    assert url and url.startswith(f"https://127.0.0.1:{edge.port}/api/images/files/")
    image = httpx.get(url, verify=edge.verify())
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


def test_the_grpc_stub_reaches_envoy_over_tls(edge: Edge) -> None:
    credentials = grpc.ssl_channel_credentials(edge.ca.cert.read_bytes())
    with grpc.secure_channel(edge.stack.envoy_target, credentials, GRPC_OPTIONS) as channel:
        reply = image_service_pb2_grpc.ImageServiceStub(channel).Generate(
            pb.GenerateRequest(prompt=PROMPT, model="local", size="256x256",
                               response_format="b64_json"), metadata=GRPC_AUTH, timeout=60)
    assert reply.data[0].b64_json.startswith(b"\x89PNG")


def curl(edge: Edge, *args: str, scheme: str = "https") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(edge.ca.cert), *args,
         f"{scheme}://127.0.0.1:{edge.port}/healthz"], capture_output=True, text=True,
        check=False)


def test_curl_speaks_h2_and_http11_on_one_port_and_old_tls_and_plaintext_are_refused(
        edge: Edge) -> None:
    for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
        answer = curl(edge, flag, "-w", "\n%{http_version}")
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.splitlines()[-1] == version
        assert '"ok"' in answer.stdout
    assert curl(edge, "--tlsv1.0", "--tls-max", "1.1").returncode != 0  # TLS 1.2 at least
    assert curl(edge, scheme="http").returncode != 0  # plaintext on the TLS port
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{edge.port}/healthz", timeout=5)
    with grpc.insecure_channel(edge.stack.envoy_target) as channel, pytest.raises(
            grpc.RpcError) as refused:  # h2c too
        image_service_pb2_grpc.ImageServiceStub(channel).Generate(
            pb.GenerateRequest(prompt=PROMPT), metadata=GRPC_AUTH, timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_server_port_takes_only_envoy_s_client_certificate(edge: Edge) -> None:
    request = pb.GenerateRequest(prompt=PROMPT, model="local", size="256x256",
                                 response_format="b64_json")
    anonymous = grpc.ssl_channel_credentials(edge.ca.cert.read_bytes())
    for channel in (grpc.insecure_channel(edge.stack.server_target),
                    grpc.secure_channel(edge.stack.server_target, anonymous)):
        with channel, pytest.raises(grpc.RpcError) as refused:
            image_service_pb2_grpc.ImageServiceStub(channel).Generate(
                request, metadata=GRPC_AUTH, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert edge.stack.server_credentials is not None
    with grpc.secure_channel(edge.stack.server_target, edge.stack.server_credentials,
                             GRPC_OPTIONS) as channel:
        reply = image_service_pb2_grpc.ImageServiceStub(channel).Generate(
            request, metadata=GRPC_AUTH, timeout=60)
    assert reply.data[0].b64_json.startswith(b"\x89PNG")


def served_serial(edge: Edge) -> int:
    """The serial number of the certificate Envoy shows a new connection (verified)."""
    with socket.create_connection(("127.0.0.1", edge.port), timeout=5) as raw, \
            edge.verify().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_renewed_certificate_is_served_without_a_restart(edge: Edge) -> None:
    before = served_serial(edge)
    pid = edge.stack.process.pid if edge.stack.process else None
    renewed = mount_secret(edge.ca, edge.tls_dir, "2026_12_06_renewed")
    assert renewed.serial != before
    deadline = time.monotonic() + 15
    while served_serial(edge) != renewed.serial:
        assert time.monotonic() < deadline, "Envoy kept serving the old certificate"
        time.sleep(0.2)
    assert edge.stack.process and edge.stack.process.pid == pid
    assert edge.stack.process.poll() is None


def request_line(stack: Stack, request_id: str) -> dict:
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in stack.log_lines()
                 if line.get("event") == "request" and line.get("request_id") == request_id]
        if lines or time.monotonic() > deadline:
            assert len(lines) == 1, lines
            return lines[0]
        time.sleep(0.05)


def spans_of(edge: Edge, trace_id: str, *steps: str) -> list[Span]:
    """The trace's spans once Envoy's and the server's (with `steps`) have all arrived."""
    def complete() -> bool:
        spans = edge.collector.trace(trace_id)
        services = {s.service for s in spans}
        return {SERVICE, f"{SERVICE}-envoy"} <= services and set(steps) <= {
            s.name for s in spans}
    edge.collector.wait_for(complete)
    return edge.collector.trace(trace_id)


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
    [rpc] = [s for s in spans if s.attributes.get("rpc.method") == "GenerateHttp"]
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


@pytest.mark.parametrize("mode", ["required", "optional"])
def test_client_certificates_when_the_edge_asks_for_them(tmp_path: Path, mode: str) -> None:
    """`required`: no connection without a certificate the CA signed. `optional`: a caller
    may come without one; one that shows a certificate must show a good one, and the server
    learns its subject (the log line's `client_cert`), never one a client made up."""
    ca = CertificateAuthority(tmp_path / "ca")
    edge_cert, caller = ca.issue("edge"), ca.issue("caller", client=True)
    stranger = CertificateAuthority(tmp_path / "other").issue("stranger", client=True)
    env = {"AIGNE_HUB_TLS_CERT_FILE": str(edge_cert.cert),
           "AIGNE_HUB_TLS_KEY_FILE": str(edge_cert.key),
           "AIGNE_HUB_TLS_CLIENT_CA_FILE": str(ca.cert),
           "AIGNE_HUB_TLS_CLIENT_CERTIFICATE": mode}
    forged = {"Authorization": f"Bearer {TEST_KEY}",
              "x-forwarded-client-cert": 'Subject="CN=forged"'}
    with Stack(tmp_path / "var", env) as stack:
        url = f"{stack.api_url}/models"
        anonymous = ssl.create_default_context(cafile=str(ca.cert))
        if mode == "required":
            with pytest.raises(httpx.HTTPError):
                httpx.get(url, verify=anonymous, headers=forged)
        else:
            answer = httpx.get(url, verify=anonymous, headers=forged)
            assert answer.status_code == 200
            assert "client_cert" not in request_line(stack, answer.headers["x-request-id"])
        strange = ssl.create_default_context(cafile=str(ca.cert))
        strange.load_cert_chain(stranger.cert, stranger.key)
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, verify=strange, headers=forged)
        known = ssl.create_default_context(cafile=str(ca.cert))
        known.load_cert_chain(caller.cert, caller.key)
        answer = httpx.get(url, verify=known, headers=forged)
        assert answer.status_code == 200
        assert request_line(stack, answer.headers["x-request-id"])["client_cert"] == "CN=caller"

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
