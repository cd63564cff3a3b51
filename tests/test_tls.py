"""TLS with real parts: a CA made at test time; the openai SDK, the generated gRPC stub and
curl reach the service over TLS (h2 and http/1.1 on one port); plaintext, h2c and old TLS
are refused; a renewed certificate is served without a restart; client certificates at the
edge, required or optional; mTLS from Envoy to the server."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc
from tests.certs import CertificateAuthority
from tests.conftest import GRPC_AUTH, GRPC_OPTIONS
from tests.edges import (  # noqa: F401  (the fixture)
    GENERATIONS,
    PROMPT,
    SERVICE,
    Edge,
    edge_stack,
    mount_secret,
    request_line,
    sdk,
)
from tests.stack import TEST_KEY, Stack


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

