"""Several server replicas behind one Envoy, started the way users start them
(`python -m service run --replicas N`), on free ports with a var/ of their own; stopped for
sure at the end, and nothing of it left running."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.stack import ROOT, SIGNING_SECRET, TEST_KEY, free_port

REPLICA_LINE = re.compile(r"replica (\d+)\s+\S+:(\d+) \(pid (\d+)\)")
ENVOY_LINE = re.compile(r"\(Envoy, pid (\d+)\)")


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports."""
    for _ in range(100):
        base = free_port()
        if base + count > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports")


class ReplicatedStack:
    def __init__(self, var_dir: Path, replicas: int, env: dict[str, str] | None = None) -> None:
        self.var_dir = var_dir
        self.replicas = replicas
        self.grpc_port = free_ports(replicas)
        self.http_port = free_port()
        self.admin_port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIGNE_HUB_")},
            "AIGNE_HUB_VAR_DIR": str(var_dir),
            "AIGNE_HUB_GRPC_PORT": str(self.grpc_port),
            "AIGNE_HUB_HTTP_PORT": str(self.http_port),
            "AIGNE_HUB_ENVOY_ADMIN_PORT": str(self.admin_port),
            "AIGNE_HUB_METRICS_PORT": "0",  # where metrics exist: off, no port to collide on
            "AIGNE_HUB_API_KEYS": TEST_KEY,
            "AIGNE_HUB_SIGNING_SECRET": SIGNING_SECRET,
            "OPENAI_API_KEY": "", "OPENAI_BASE_URL": "",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = var_dir / "stack.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def envoy_target(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def targets(self) -> list[str]:
        return [f"127.0.0.1:{self.grpc_port + i}" for i in range(self.replicas)]

    def start(self, timeout: float = 120) -> ReplicatedStack:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        # The log is appended to (a stack started again on the same var dir): what this start
        # wrote begins here.
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            # A process group of its own, as a shell gives a foreground job: Ctrl-C is a
            # SIGINT to that group.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "run", "--replicas", str(self.replicas)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                process_group=0)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the stack exited early:\n{self.log_tail()}")
            if len(self.pids()) == self.replicas and self._envoy_ready() and all(
                    serving(t) for t in self.targets):
                return
            time.sleep(0.2)
        raise TimeoutError(f"the stack did not become ready:\n{self.log_tail()}")

    def _envoy_ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1).is_success
        except httpx.HTTPError:
            return False

    def pids(self) -> dict[str, int]:
        """Each replica's pid, by its target, as the start-up banner lists them."""
        return {f"127.0.0.1:{port}": int(pid)
                for _, port, pid in REPLICA_LINE.findall(self.banner())}

    def envoy_pid(self) -> int:
        """Envoy's pid, as the start-up banner gives it."""
        found = ENVOY_LINE.search(self.banner())
        assert found is not None, self.log_tail()
        return int(found.group(1))

    def banner(self) -> str:
        """What this start wrote to the log."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(getattr(self, "_log_start", 0))
            return log.read().decode(errors="replace")

    def children(self) -> list[int]:
        """The processes the stack started (Envoy and the replicas) that are still running."""
        if self.process is None:
            return []
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
        return found

    def host_health(self) -> dict[str, str]:
        """Envoy's view of each replica: its health flags."""
        text = httpx.get(f"http://127.0.0.1:{self.admin_port}/clusters", timeout=5).text
        return {line.split("::")[1]: line.rsplit("::", 1)[1] for line in text.splitlines()
                if line.startswith("hub_server::") and "::health_flags::" in line}

    def access_log(self) -> dict[str, dict]:
        """Envoy's access log lines, by request id."""
        lines: dict[str, dict] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"source":"envoy"' in line:
                entry = json.loads(line)
                lines[entry["request_id"]] = entry
        return lines

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def interrupt(self) -> None:
        """Ctrl-C, as a terminal sends it: SIGINT to the foreground process group."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)

    def stop(self) -> None:
        """SIGTERM and wait (the replicas drain, then Envoy stops); kill if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ReplicatedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
