"""Load from C tools, so that the client does not eat the CPU it measures: wrk for HTTP/1.1
(REST, the provider, LiteLLM) and h2load for gRPC (HTTP/2 with gRPC framing)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

WRK_SCRIPT = """
local body = os.getenv("BENCH_BODY")
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
                 + summary.errors.timeout
  io.write(string.format(
    'BENCH {"p50": %d, "p99": %d, "requests": %d, "seconds": %f, "non2xx": %d, "errors": %d}\\n',
    latency:percentile(50), latency:percentile(99), summary.requests,
    summary.duration / 1e6, summary.errors.status, errors))
end
"""


@dataclass(frozen=True)
class Result:
    p50_ms: float
    p99_ms: float
    rps: float
    requests: int
    failed: int  # non-2xx answers and socket errors


def ensure_tools() -> None:
    """wrk and h2load, from Debian's packages (wrk, nghttp2-client) when missing."""
    if shutil.which("wrk") and shutil.which("h2load"):
        return
    if os.geteuid() != 0:
        raise SystemExit("make bench needs wrk and h2load: apt-get install wrk nghttp2-client")
    install = ["apt-get", "install", "-y", "-q", "wrk", "nghttp2-client"]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(install, check=True, capture_output=True)


def wrk(url: str, body: bytes, auth: str, *, connections: int, seconds: float) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    try:
        out = subprocess.run(
            ["wrk", f"-t{min(connections, 2)}", f"-c{connections}", f"-d{seconds:g}s",
             "--timeout", "60s", "-s", script.name, url],
            env={**os.environ, "BENCH_BODY": body.decode(), "BENCH_AUTH": auth},
            capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    data = json.loads(line[6:])
    return Result(data["p50"] / 1000, data["p99"] / 1000, data["requests"] / data["seconds"],
                  data["requests"], data["non2xx"] + data["errors"])


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, then its length, then the bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass(frozen=True)
class Calls:
    """h2load's calls: each successful one's latency, and how many failed."""

    elapsed_ms: list[float]
    failed: int
    wall_seconds: float


def h2load_calls(url: str, message: bytes, auth: str, *, connections: int,
                 seconds: float | None = None, requests: int | None = None,
                 headers: dict[str, str] | None = None) -> Calls:
    """Unary gRPC calls of `message` to `url` (http://host:port/package.Service/Method), or
    calls of a server-streaming method that answers one message: h2load sends and reads the
    same frames."""
    with tempfile.TemporaryDirectory() as tmp:
        body, log = Path(tmp) / "body", Path(tmp) / "log"
        body.write_bytes(grpc_frame(message))
        command = ["h2load", f"-c{connections}", "-m1", "-t1", "-w30", "-W30",
                   "-H", "content-type: application/grpc", "-H", "te: trailers",
                   "-H", f"authorization: {auth}", "-d", str(body), f"--log-file={log}", url]
        for name, value in (headers or {}).items():
            command[-1:-1] = ["-H", f"{name}: {value}"]
        command[1:1] = [f"-D{seconds:g}"] if seconds else [f"-n{requests}"]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    done = [row for row in rows if row[1] == "200"]
    elapsed = sorted(int(row[2]) / 1000 for row in done)
    starts = [int(row[0]) for row in rows]
    span = (max(starts) - min(starts)) / 1e6 if len(starts) > 1 else 0.0
    failed = len(rows) - len(done)
    if "succeeded" not in out:
        failed = max(failed, 1)
    return Calls(elapsed, failed, seconds or span + (elapsed[-1] / 1000 if elapsed else 0.0))


def h2load(url: str, message: bytes, auth: str, *, connections: int,
           seconds: float | None = None, requests: int | None = None,
           headers: dict[str, str] | None = None) -> Result:
    """Unary gRPC calls of `message` to `url` (http://host:port/package.Service/Method)."""
    calls = h2load_calls(url, message, auth, connections=connections, seconds=seconds,
                         requests=requests, headers=headers)
    elapsed, wall = calls.elapsed_ms, calls.wall_seconds
    return Result(percentile(elapsed, 50), percentile(elapsed, 99),
                  len(elapsed) / wall if wall else 0.0, len(elapsed), calls.failed)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] \
        if p < 100 else values[-1]
