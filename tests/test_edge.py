"""The public edge, as an adversarial client meets it (issue 18): header limits that agree
between Envoy and the server (431, JSON), slow clients cut off, HEAD like GET, redirects to
the configured public URL whatever the Host says, a non-UTF-8 header value as one log line,
private files, and keys taken out of the settings no longer valid."""

from __future__ import annotations

import contextlib
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack import ROOT, TEST_KEY, Stack
from tests.test_bad_input import assert_error

PUBLIC_BASE = "https://hub.example.test"
HEADER_TIMEOUT_SECONDS = 2
REQUEST_TIMEOUT_SECONDS = 4


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"AIGNE_HUB_PUBLIC_BASE_URL": PUBLIC_BASE,
           "AIGNE_HUB_CLIENT_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_SECONDS),
           "AIGNE_HUB_CLIENT_REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT_SECONDS)}
    with Stack(tmp_path_factory.mktemp("edge") / "var", env) as stack:
        yield stack


@pytest.fixture
def http(edge: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge.base_url, timeout=60,
                      headers={"Authorization": f"Bearer {TEST_KEY}"}) as client:
        yield client


def test_headers_under_the_limit_always_pass(http: httpx.Client) -> None:
    """8-30 KB of headers once answered a random 429 (gRPC's soft metadata limit)."""
    for size_kb in (8, 12, 16, 24, 30) * 4:
        answer = http.get("/api/models", headers={"x-big": "a" * (size_kb * 1024)})
        assert answer.status_code == 200, (size_kb, answer.text[:300])


def test_headers_over_the_limit_get_431_in_the_json_error_shape(http: httpx.Client) -> None:
    for size_kb in (40, 100):
        answer = http.get("/api/models", headers={"x-big": "a" * (size_kb * 1024)})
        body = assert_error(answer, 431, None, "headers_too_large")
        assert "32768 bytes" in body["message"]
        assert "x-hub" not in answer.text and "grpc" not in answer.text.lower()


def drip(edge: Stack, start: bytes, drops: int) -> tuple[bytes, float]:
    """Send `start`, then a byte every 0.3 s (`drops` of them, or until cut off); the
    answer, read until the connection closes, and how long it all took."""
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=30) as slow:
        started = time.monotonic()
        slow.sendall(start)
        for _ in range(drops):
            time.sleep(0.3)
            try:
                slow.sendall(b"x")
            except OSError:
                break
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := slow.recv(4096):
                answer += chunk
        return answer, time.monotonic() - started


def test_a_slowloris_connection_is_cut(edge: Stack) -> None:
    # Headers that never end...
    answer, waited = drip(edge, b"GET /healthz HTTP/1.1\r\nHost: hub\r\nx-drip: ", 100)
    assert waited < HEADER_TIMEOUT_SECONDS + 10, waited
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"code":"request_timeout"' in answer
    # ...and a body that never ends.
    answer, waited = drip(edge, b"POST /api/images/generations HTTP/1.1\r\nHost: hub\r\n"
                          b"Content-Type: application/json\r\nContent-Length: 100000\r\n"
                          b"Authorization: Bearer " + TEST_KEY.encode() + b"\r\n\r\n", 100)
    assert waited < REQUEST_TIMEOUT_SECONDS + 10, waited
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"code":"request_timeout"' in answer


def test_head_answers_like_get_without_a_body(http: httpx.Client) -> None:
    got, head = http.get("/healthz"), http.head("/healthz")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-type"] == got.headers["content-type"] == "application/json"
    generated = http.post("/api/images/generations",
                          json={"model": "local", "prompt": "a fox", "size": "256x256"})
    url = generated.json()["data"][0]["url"].replace(PUBLIC_BASE, "")
    image, head = http.get(url), http.head(url)
    assert image.status_code == head.status_code == 200
    assert head.content == b"" and head.headers["content-type"] == "image/png"
    assert int(head.headers["content-length"]) == len(image.content)
    forged = url.replace("signature=", "signature=0")
    refused, head = http.get(forged), http.head(forged)
    assert refused.status_code == head.status_code and refused.status_code >= 400
    assert head.content == b"" and "grpc-status" not in head.headers
    assert int(head.headers["content-length"]) == len(refused.content)
    assert head.headers["content-type"] == "application/json"


def test_a_forged_host_does_not_redirect_browsers_elsewhere(http: httpx.Client) -> None:
    for path in ("/", "/console"):
        answer = http.get(path, headers={"accept": "text/html", "host": "evil.example:1234"})
        assert answer.status_code == 301
        assert answer.headers["location"] == f"{PUBLIC_BASE}/console/"


def test_a_header_value_that_is_not_utf8_is_one_json_log_line(edge: Stack) -> None:
    marker = b"\xff\xfe\x80-not-utf8"
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=30) as raw:
        raw.sendall(b"GET /api/models HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n"
                    b"Authorization: Bearer " + TEST_KEY.encode() + b"\r\nX-Odd: " + marker
                    + b"\r\n\r\n")
        answer = raw.makefile("rb").read()
    assert answer.split(b"\r\n", 1)[0] in (b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request")
    time.sleep(0.5)
    text = edge.log_path.read_text(errors="replace")
    assert "Traceback" not in text and "not-utf8" not in text
    assert any(line.get("logger", "").startswith("grpc") and "UTF-8" in line["event"]
               for line in edge.log_lines())


def test_the_database_and_the_images_are_private(edge: Stack, http: httpx.Client) -> None:
    http.post("/api/images/generations", json={"model": "local", "prompt": "a cat",
                                               "size": "256x256"})
    database = edge.var_dir / "hub.db"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    images = edge.var_dir / "images"
    stored = [images, *images.rglob("*")]
    assert any(p.name.startswith("img_") for p in stored)
    for path in stored:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


def test_a_key_taken_out_of_the_settings_stops_working(tmp_path: Path) -> None:
    kept, removed = "ahk-kept-" + "a" * 40, "ahk-gone-" + "b" * 40
    var = tmp_path / "var"

    def status(stack: Stack, key: str) -> int:
        return httpx.get(f"{stack.api_url}/models", timeout=30,
                         headers={"Authorization": f"Bearer {key}"}).status_code

    with Stack(var, {"AIGNE_HUB_API_KEYS": f"{kept},{removed}"}) as stack:
        assert (status(stack, kept), status(stack, removed)) == (200, 200)
    with Stack(var, {"AIGNE_HUB_API_KEYS": kept}) as stack:
        assert status(stack, kept) == 200
        assert status(stack, removed) in (401, 403)


def test_run_fails_naming_the_variable_when_a_port_is_taken(tmp_path: Path) -> None:
    """It once printed its banner, then Envoy's bind error, and exited 0."""
    env = Stack(tmp_path / "var").env  # not started: its settings, on free ports

    def run(**settings: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service", "run"], cwd=ROOT,
                              env={**env, **settings}, capture_output=True, text=True,
                              timeout=90)

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        for variable in ("AIGNE_HUB_HTTP_PORT", "AIGNE_HUB_GRPC_PORT",
                         "AIGNE_HUB_ENVOY_ADMIN_PORT", "AIGNE_HUB_METRICS_PORT"):
            done = run(**{variable: port})
            assert done.returncode == 1, done
            assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
            assert f"set {variable} to another port" in done.stderr
            assert "AIGNE Hub image service" not in done.stdout
    # A part that fails to start (Envoy without its Lua filter): no banner, status 1.
    done = run(AIGNE_HUB_ENVOY_ASSETS_ROOT=str(tmp_path / "nowhere"))
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Envoy did not start" in done.stderr
    assert "AIGNE Hub image service" not in done.stdout
