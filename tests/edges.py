"""The production-edge stack of tests/test_tls.py and tests/test_traces.py: TLS at Envoy
(a certificate from a CA made at test time, mounted as Kubernetes mounts a TLS Secret), mTLS
between Envoy and the server, traces exported to a real OTLP receiver on 127.0.0.1."""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import openai
import pytest

from tests.certs import CertificateAuthority, Issued
from tests.conftest import ImageHost, provider_env
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


@pytest.fixture(scope="module", name="edge")
def edge_stack(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI,
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


