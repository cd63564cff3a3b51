"""The REST door's RPC, unary or streaming: did `POST /api/images/generations` get slower when
it moved from the unary GenerateHttp to the server-streaming GenerateOrStreamHttp (issue 17)?

Both RPCs take the same HttpBody (a GenerateRequest's JSON) and, when the request does not
stream, answer the same JSON in one message; GenerateHttp is kept, without an HTTP binding,
for gRPC callers. So the same small non-streaming request is sent to each the same way:
gRPC straight to the server with h2load (Envoy left out, its cost is the same for both), with
the `x-hub-door: rest` header Envoy adds to REST calls. The RPCs take turns, ROUNDS short
runs each at each concurrency, so drift on a shared machine falls on both; the figures are
the p50 and p99 of all their calls, and the server's CPU time per request (the median of
the rounds, whose spread shows the noise).

Part of `make bench`; alone (it starts the fake provider and our stack itself):

    BENCH_SECONDS=3 python -m bench.rest_rpcs
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.api import httpbody_pb2

from aigne.hub.v1 import image_service_pb2 as pb
from bench import load, processes
from tests.stack import TEST_KEY, Stack, free_port

RPCS = ("GenerateHttp", "GenerateOrStreamHttp")
CONCURRENCY = (1, 16)
ROUNDS = 8  # turns of each RPC at each concurrency, BENCH_SECONDS / 3 each
SERVICE = "/aigne.hub.v1.ImageService/"


@dataclass
class Row:
    """One RPC at one concurrency, over all its rounds."""

    rpc: str
    connections: int
    elapsed_ms: list[float] = field(default_factory=list)  # every successful call's latency
    cpu_ms: list[float] = field(default_factory=list)  # server CPU per request, each round
    rps: list[float] = field(default_factory=list)  # requests per second, each round
    failed: int = 0

    def latency_ms(self, p: float) -> float:
        return load.percentile(self.elapsed_ms, p)


def measure(server: str, server_pid: int, request: dict, seconds: float) -> list[Row]:
    """Each RPC's latency and server CPU per request for `request`, at each concurrency, in
    ROUNDS turns of `seconds` / 3 each. `server` is the server's own gRPC address."""
    message = pb.GenerateHttpRequest(body=httpbody_pb2.HttpBody(
        content_type="application/json", data=json.dumps(request).encode())).SerializeToString()
    # GenerateOrStreamHttpRequest has the same one field: the same bytes are the same request.
    assert pb.GenerateOrStreamHttpRequest.FromString(message).body.data
    auth, door = f"Bearer {TEST_KEY}", {"x-hub-door": "rest"}
    check_answers(server, message, [("authorization", auth), *door.items()])
    for rpc in RPCS:  # warm both up: connections, caches, the method handlers
        load.h2load(f"http://{server}{SERVICE}{rpc}", message, auth, connections=4, seconds=1,
                    headers=door)
    turn_seconds = max(1, round(seconds / 3))  # h2load's -D takes whole seconds
    rows: list[Row] = []
    for connections in CONCURRENCY:
        found = {rpc: Row(rpc, connections) for rpc in RPCS}
        for turn in range(ROUNDS):
            for rpc in RPCS if turn % 2 == 0 else RPCS[::-1]:
                before = processes.cpu_seconds(server_pid)
                calls = load.h2load_calls(f"http://{server}{SERVICE}{rpc}", message, auth,
                                          connections=connections, seconds=turn_seconds,
                                          headers=door)
                cpu_s = processes.cpu_seconds(server_pid) - before
                row = found[rpc]
                row.cpu_ms.append(1000 * cpu_s / max(1, len(calls.elapsed_ms)))
                row.rps.append(len(calls.elapsed_ms) / calls.wall_seconds)
                row.elapsed_ms += calls.elapsed_ms
                row.failed += calls.failed
        rows += found.values()
    return rows


def check_answers(server: str, message: bytes, metadata: list[tuple[str, str]]) -> None:
    """Both RPCs answer the request with status OK and one JSON message with an image: h2load
    counts a call by its HTTP status, which is 200 for a gRPC error too."""
    with grpc.insecure_channel(server) as channel:
        unary = channel.unary_unary(f"{SERVICE}GenerateHttp")(message, metadata=metadata,
                                                              timeout=60)
        streamed = list(channel.unary_stream(f"{SERVICE}GenerateOrStreamHttp")(
            message, metadata=metadata, timeout=60))
    for answer in (unary, *streamed):
        body = httpbody_pb2.HttpBody.FromString(answer)
        assert body.content_type == "application/json" and json.loads(body.data)["data"], body
    assert len(streamed) == 1, f"{len(streamed)} messages"


def report(rows: list[Row], request: dict) -> str:
    """The table, and the streaming RPC's difference: in latency over all calls, in CPU as
    the median of the rounds' differences (each round's pair ran back to back)."""
    lines = [f"REST door RPC, unary GenerateHttp vs streaming GenerateOrStreamHttp: the same "
             f"non-streaming request ({request['model']}, {request.get('size', 'auto')}, "
             f"{request.get('response_format', 'default')}), gRPC straight to the server, "
             f"{ROUNDS} alternating rounds each",
             "  concurrency  RPC                     p50 ms  p99 ms     req/s  failed  "
             "server CPU ms/request (median, min-max of rounds)"]
    for row in rows:
        lines.append(
            f"  {row.connections:<11}  {row.rpc:22} {row.latency_ms(50):7.2f}"
            f" {row.latency_ms(99):7.2f}  {statistics.median(row.rps):8.0f}  {row.failed:6d}"
            f"  {statistics.median(row.cpu_ms):.3f} ({min(row.cpu_ms):.3f}-{max(row.cpu_ms):.3f})")
    for connections in CONCURRENCY:
        unary, streaming = (next(r for r in rows if r.rpc == rpc and r.connections == connections)
                            for rpc in RPCS)
        cpu = statistics.median(s - u for s, u in zip(streaming.cpu_ms, unary.cpu_ms,
                                                      strict=True))
        lines.append(
            f"  streaming minus unary at {connections}: p50 "
            f"{streaming.latency_ms(50) - unary.latency_ms(50):+.3f} ms, p99 "
            f"{streaming.latency_ms(99) - unary.latency_ms(99):+.3f} ms, server CPU "
            f"{cpu:+.3f} ms/request ({100 * cpu / statistics.median(unary.cpu_ms):+.0f}%)")
    return "\n".join(lines) + "\n"


def main() -> int:
    """This case alone: the fake provider and our stack, then the measurement."""
    from bench.__main__ import PROVIDER_KEY, REQUEST  # (bench/__main__.py imports this module)

    load.ensure_tools()
    seconds = float(os.environ.get("BENCH_SECONDS", "5"))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (other work "
          f"on this machine skews the figures); {seconds:g} s per run\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="aigne-rest-rpcs-") as tmp, \
            contextlib.ExitStack() as running:
        fake_port = free_port()
        fake = processes.start(running, [sys.executable, "-m", "bench.fake_provider",
                                         str(fake_port)], Path(tmp) / "fake.log")
        processes.wait_for_line(Path(tmp) / "fake.log", "ready", fake)
        ours = Stack(Path(tmp) / "ours", {
            "OPENAI_API_KEY": PROVIDER_KEY,
            "OPENAI_BASE_URL": f"http://127.0.0.1:{fake_port}/v1"}).start()
        running.callback(ours.stop)
        assert ours.process is not None
        rows = measure(ours.server_target, ours.process.pid, REQUEST, seconds)
    print(report(rows, REQUEST), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
