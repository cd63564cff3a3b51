"""The real stack for tests: `python -m service run` (server and Envoy) on free ports, with
its own var/ directory, stopped for sure at the end. `Stack.replica()` adds more server
processes (`python -m service serve`) on the same database, as replicas would be."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
TEST_KEY = "ahk-test-" + "k" * 40
SIGNING_SECRET = "test-signing-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """One server and one Envoy, started by the same command users run."""

    def __init__(self, var_dir: Path, env: dict[str, str] | None = None, *,
                 file_size_limit: int | None = None,
                 server_credentials: grpc.ChannelCredentials | None = None) -> None:
        """`file_size_limit` caps the size of any file the stack writes (RLIMIT_FSIZE): a
        way to fill the image store that needs no root and no special file system.
        `server_credentials` reach a server whose port is mTLS (AIGNE_HUB_UPSTREAM_TLS_*)."""
        self.var_dir = var_dir
        self.file_size_limit = file_size_limit
        self.server_credentials = server_credentials
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.admin_port = free_port()
        self.metrics_port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIGNE_HUB_")},
            "AIGNE_HUB_VAR_DIR": str(var_dir),
            "AIGNE_HUB_GRPC_PORT": str(self.grpc_port),
            "AIGNE_HUB_HTTP_PORT": str(self.http_port),
            "AIGNE_HUB_ENVOY_ADMIN_PORT": str(self.admin_port),
            "AIGNE_HUB_METRICS_PORT": str(self.metrics_port),
            # The tests of quotas and idempotency send bursts of 200; the back-pressure tests
            # set their own bound.
            "AIGNE_HUB_MAX_IN_FLIGHT_GENERATIONS": "1000",
            "AIGNE_HUB_API_KEYS": TEST_KEY,
            "AIGNE_HUB_SIGNING_SECRET": SIGNING_SECRET,
            "OPENAI_API_KEY": "", "OPENAI_BASE_URL": "",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = var_dir / "stack.log"

    @property
    def base_url(self) -> str:
        scheme = "https" if self.env.get("AIGNE_HUB_TLS_CERT_FILE") else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def envoy_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def envoy_target(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def server_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 60, tries: int = 3) -> Stack:
        """Start and wait until ready. free_port() cannot reserve a port, so another process
        (a client's ephemeral port, say) may take one before Envoy or the server binds it:
        then the stack starts again on fresh ports."""
        for attempt in range(tries):
            self.var_dir.mkdir(parents=True, exist_ok=True)
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                return self._start(timeout)
            except RuntimeError:
                with self.log_path.open("rb") as log:
                    log.seek(offset)
                    tail = log.read().decode(errors="replace")
                if attempt + 1 == tries or not any(
                        sign in tail for sign in ("Address already in use", "Failed to bind")):
                    raise
                self._fresh_ports()
        raise AssertionError("unreachable")

    def _fresh_ports(self) -> None:
        self.grpc_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
        self.env.update({"AIGNE_HUB_GRPC_PORT": str(self.grpc_port),
                         "AIGNE_HUB_HTTP_PORT": str(self.http_port),
                         "AIGNE_HUB_ENVOY_ADMIN_PORT": str(self.admin_port)})

    def _start(self, timeout: float) -> Stack:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "run"], cwd=ROOT, env=self.env,
            stdout=log, stderr=subprocess.STDOUT)
        if self.file_size_limit is not None:  # not preexec_fn: this process has gRPC threads
            resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE,
                             (self.file_size_limit, self.file_size_limit))
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the server's Prometheus samples named `name` with these labels."""
        text = httpx.get(self.metrics_url, timeout=5).text
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples
                   if sample.name == name
                   and all(sample.labels.get(k) == v for k, v in labels.items()))

    def log_lines(self) -> list[dict]:
        """The stack's JSON log lines (the server's and Envoy's access log)."""
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
        return lines

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the stack exited early:\n{self.log_tail()}")
            if self._server_serving() and self._envoy_ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"the stack did not become ready:\n{self.log_tail()}")

    def _server_serving(self) -> bool:
        return serving(self.server_target, self.server_credentials)

    def _envoy_ready(self) -> bool:
        try:
            ready = httpx.get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1)
            return ready.status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m service ARGS` against this stack's database."""
        return subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=60, check=True)

    def replica(self) -> Replica:
        """Another server process on this stack's database, settings and var/ (not started)."""
        return Replica(self)

    def stop(self) -> None:
        """SIGTERM and wait (the run command stops Envoy and drains); kill if it hangs."""
        terminate(self.process)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Replica:
    """One more gRPC server (`python -m service serve`) sharing a stack's database, reached
    on its own port (not through the stack's Envoy)."""

    def __init__(self, stack: Stack) -> None:
        self.grpc_port = free_port()
        self.env = {**stack.env, "AIGNE_HUB_GRPC_PORT": str(self.grpc_port),
                    "AIGNE_HUB_METRICS_PORT": str(free_port())}
        self.log_path = stack.var_dir / f"replica-{self.grpc_port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 60) -> Replica:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve"], cwd=ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not serving(self.target):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the replica did not start:\n{self.log_path.read_text()}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        terminate(self.process)

    def __enter__(self) -> Replica:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serving(target: str, credentials: grpc.ChannelCredentials | None = None) -> bool:
    """Whether the gRPC server at `target` answers its health check with SERVING."""
    with (grpc.secure_channel(target, credentials) if credentials
          else grpc.insecure_channel(target)) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def terminate(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM and wait (the server drains; `run` stops Envoy too); kill if it hangs."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Poll `condition` until it holds; fail the test if it does not within `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)
