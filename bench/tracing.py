"""What traces cost on the hot path: the server's CPU per small REST request (wrk, 16 at
once) with tracing off (no OTEL_* set: no SDK at all) and with every request sampled
(OTEL_TRACES_SAMPLER=always_on, i.e. a ratio of 1.0), exported over OTLP/gRPC to a
receiver on 127.0.0.1 (tests/fakes/otlp.py, in this process: its CPU is not counted).
The same fake provider, the same request; one stack after the other."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import load, processes
from tests.fakes.otlp import Collector
from tests.stack import TEST_KEY, Stack, free_port

ROOT = Path(__file__).resolve().parents[1]
REQUEST = {"model": "gpt-image-2", "prompt": "a lighthouse at dawn", "size": "1024x1024",
           "response_format": "b64_json"}
CONNECTIONS = 16


def measure(seconds: float, database_env: Callable[[contextlib.ExitStack], dict[str, str]]
            ) -> str:
    """One line: server CPU per request with tracing off, and with sampling at 1.0."""
    with tempfile.TemporaryDirectory(prefix="aigne-tracing-") as tmp, \
            contextlib.ExitStack() as running:
        fake_port = free_port()
        fake = subprocess.Popen([sys.executable, "-m", "bench.fake_provider", str(fake_port)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running.callback(_stop, fake)
        collector = Collector().start()
        running.callback(collector.stop)
        provider = {"OPENAI_API_KEY": "sk-fake-provider-key",
                    "OPENAI_BASE_URL": f"http://127.0.0.1:{fake_port}/v1",
                    **database_env(running)}
        traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
                  "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_TRACES_SAMPLER": "always_on"}
        off, failed_off = _server_cpu_ms(Path(tmp) / "off", provider, seconds)
        on, failed_on = _server_cpu_ms(Path(tmp) / "on", {**provider, **traced}, seconds)
        spans = len(collector.spans)
    return (f"tracing: server CPU per small request (REST, {CONNECTIONS} at once): off "
            f"{off:.2f} ms, sampled at 1.0 {on:.2f} ms ({on - off:+.2f} ms, "
            f"{(on - off) / off:+.0%}); {spans} spans exported; failed {failed_off + failed_on}")


def _server_cpu_ms(var_dir: Path, env: dict[str, str], seconds: float) -> tuple[float, int]:
    with Stack(var_dir, env) as stack:
        assert stack.process is not None
        url, body = f"{stack.api_url}/images/generations", json.dumps(REQUEST).encode()
        load.wrk(url, body, f"Bearer {TEST_KEY}", connections=4, seconds=1)  # warm up
        before = processes.cpu_seconds(stack.process.pid)
        result = load.wrk(url, body, f"Bearer {TEST_KEY}", connections=CONNECTIONS,
                          seconds=seconds)
        cpu = processes.cpu_seconds(stack.process.pid) - before
        time.sleep(0.1)
    return cpu * 1000 / max(1, result.requests), result.failed


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
