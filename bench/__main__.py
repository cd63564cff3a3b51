"""`make bench`: what the two doors add over a provider that answers at once.

In one run, same requests, same concurrency, same load generators (wrk, h2load):
  1. the fake provider called directly (the baseline);
  2. the floor: the same Envoy config in front of a grpc.aio server with no logic that answers
     the bytes our server answers (what the architecture costs before we add anything);
  3. our gRPC door and 4. our REST door, through Envoy (`python -m service run`);
  5. LiteLLM's proxy in front of the same fake provider.
p50/p99 latency added over the baseline and requests per second at concurrency 1, 16 and 64;
then the REST door's RPC, the unary GenerateHttp it was against the streaming
GenerateOrStreamHttp it is (bench/rest_rpcs.py): the same small request to each, gRPC straight
to the server, their latency and server CPU per request; then n=10 1024x1024 `b64_json`
(~2.4 MB noise PNGs, ~33 MB of JSON): time, and peak RSS of the server and Envoy; then the
CPU cost of each piece of our request path, measured alone; then the burst case: BURST_N
(1,000) generations at once against a provider that takes BURST_DELAY (3) seconds, ours with
`make run`'s defaults and LiteLLM: how many were served, what each waited beyond the
provider's time, and the memory per waiting request.
Figures are printed, not asserted. BENCH_SECONDS sets each run's length (default 5);
BENCH_DATABASE=postgres runs our server on a throwaway PostgreSQL cluster (the tests' own)
instead of SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc as pb_grpc
from bench import burst, litellm_proxy, load, pieces, processes, rest_rpcs, tracing
from service.config import Settings
from service.ops import envoy
from tests.stack import TEST_KEY, Stack, free_port

ROOT = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
DATABASE = os.environ.get("BENCH_DATABASE", "sqlite")
BURST_N = int(os.environ.get("BURST_N", "1000"))
BURST_DELAY = float(os.environ.get("BURST_DELAY", "3"))
CONCURRENCY = (1, 16, 64)
REQUEST = {"model": "gpt-image-2", "prompt": "a lighthouse at dawn", "size": "1024x1024",
           "response_format": "b64_json"}
BIG_REQUEST = {**REQUEST, "n": 10}
GENERATE = "/aigne.hub.v1.ImageService/Generate"
PROVIDER_KEY = "sk-fake-provider-key"


@dataclass
class Contender:
    """One way to the fake provider, and the processes whose CPU and memory it uses."""

    name: str
    kind: str  # http (wrk) or grpc (h2load)
    url: str
    auth: str
    pids: dict[str, int] = field(default_factory=dict)

    def run(self, body: dict, connections: int, seconds: float) -> load.Result:
        if self.kind == "grpc":
            return load.h2load(self.url, pb.GenerateRequest(**body).SerializeToString(),
                               self.auth, connections=connections, seconds=seconds)
        return load.wrk(self.url, json.dumps(body).encode(), self.auth,
                        connections=connections, seconds=seconds)


def main() -> int:
    load.ensure_tools()
    litellm_proxy.ensure_installed()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
          f"(other work on this machine skews the figures); Python {platform.python_version()},"
          f" Envoy {envoy_version()}, "
          f"LiteLLM {litellm_proxy.VERSION}; {SECONDS:g} s per run; our database: "
          f"{DATABASE}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="aigne-bench-") as tmp, \
            contextlib.ExitStack() as running:
        database = database_env(running)
        paths, ours = running.enter_context(started(Path(tmp), database))
        small = small_requests(paths)
        assert ours.process is not None
        rest_rpc_rows = rest_rpcs.measure(ours.server_target, ours.process.pid, REQUEST,
                                          SECONDS)
        print(rest_rpcs.report(rest_rpc_rows, REQUEST), flush=True)
        big = big_requests(paths)
        costs = pieces.measure(paths[0].url.rsplit("/v1/", 1)[0], PROVIDER_KEY)
    with tempfile.TemporaryDirectory(prefix="aigne-burst-") as tmp, \
            contextlib.ExitStack() as running:
        bursts = burst_case(running, Path(tmp), database_env(running))
    print_pieces(costs, small)
    print_bursts(bursts)
    print_targets(small, big, bursts)
    print(tracing.measure(SECONDS, database_env), flush=True)  # bench/tracing.py
    return 0


def database_env(running: contextlib.ExitStack) -> dict[str, str]:
    """Our server's database: SQLite under its var dir, or a fresh PostgreSQL database."""
    if DATABASE != "postgres":
        return {}
    from tests.postgres import PostgresServer

    server = running.enter_context(PostgresServer())
    return {"AIGNE_HUB_DATABASE_URL": server.create_database(f"bench_{os.getpid()}_{id(running)}")}


def burst_case(running: contextlib.ExitStack, tmp: Path,
               database: dict[str, str]) -> dict[str, burst.BurstResult]:
    """BURST_N generations at once, against a provider that answers after BURST_DELAY s:
    ours as `make run` starts it (its defaults, not the tests' bounds), then LiteLLM."""
    fake_port = free_port()
    fake = processes.start(running, [sys.executable, "-m", "bench.fake_provider",
                                     str(fake_port), str(BURST_DELAY)], tmp / "slow-fake.log")
    processes.wait_for_line(tmp / "slow-fake.log", "ready", fake)
    provider = f"http://127.0.0.1:{fake_port}"
    defaults = Settings()
    ours = Stack(tmp / "ours", {
        "OPENAI_API_KEY": PROVIDER_KEY, "OPENAI_BASE_URL": f"{provider}/v1",
        "AIGNE_HUB_MAX_IN_FLIGHT_GENERATIONS": str(defaults.max_in_flight_generations),
        **database}).start()
    running.callback(ours.stop)
    assert ours.process is not None
    ours_pids = [ours.process.pid, *processes.children(ours.process.pid)]
    results = {"ours, REST": asyncio.run(burst.burst(
        f"{ours.api_url}/images/generations", f"Bearer {TEST_KEY}", REQUEST, BURST_N,
        BURST_DELAY, ours_pids))}
    ours.stop()
    lite_port = free_port()
    lite = litellm_proxy.start(tmp, lite_port, provider)
    running.callback(processes.stop, lite)
    lite_pids = [lite.pid, *processes.children(lite.pid)]
    results["LiteLLM proxy"] = asyncio.run(burst.burst(
        f"http://127.0.0.1:{lite_port}/v1/images/generations",
        f"Bearer {litellm_proxy.MASTER_KEY}", REQUEST, BURST_N, BURST_DELAY, lite_pids))
    return results


def print_bursts(bursts: dict[str, burst.BurstResult]) -> None:
    print(f"\nburst: {BURST_N} generations at once, the provider answering each after "
          f"{BURST_DELAY:g} s")
    for name, result in bursts.items():
        print("  " + result.line(name))


def envoy_version() -> str:
    out = subprocess.run([envoy.envoy_binary(), "--version"], capture_output=True,
                         text=True).stdout
    found = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return found.group(1) if found else "?"


@contextlib.contextmanager
def started(tmp: Path, database: dict[str, str]) -> Iterator[tuple[list[Contender], Stack]]:
    """The fake provider, our stack, the floor and LiteLLM, stopped for sure at the end: the
    ways to the provider, and our stack."""
    with contextlib.ExitStack() as stack:
        # The floor's Envoy first: envoy.start forks with a preexec function, which is only
        # safe while this process has no threads yet (gRPC clients below start some).
        floor_port, floor_http, floor_admin = free_port(), free_port(), free_port()
        settings = Settings(http_port=floor_http, envoy_admin_port=floor_admin,
                            var_dir=tmp / "floor")
        floor_envoy = envoy.start(envoy.write_config(settings, tmp / "floor" / "envoy.yaml",
                                                     [("127.0.0.1", floor_port)]),
                                  concurrency=settings.envoy_concurrency,
                                  output=(tmp / "floor-envoy.log").open("wb"))
        stack.callback(processes.stop, floor_envoy)
        fake_port = free_port()
        fake = processes.start(stack, [sys.executable, "-m", "bench.fake_provider",
                                       str(fake_port)], tmp / "fake.log")
        processes.wait_for_line(tmp / "fake.log", "ready", fake)
        provider = f"http://127.0.0.1:{fake_port}"
        ours = Stack(tmp / "ours", {"OPENAI_API_KEY": PROVIDER_KEY,
                                    "OPENAI_BASE_URL": f"{provider}/v1", **database}).start()
        stack.callback(ours.stop)
        assert ours.process is not None
        server, ours_envoy = ours.process.pid, processes.children(ours.process.pid)[0]
        answers = record_answers(ours, tmp / "answers")
        floor = processes.start(stack, [sys.executable, "-m", "bench.floor", str(floor_port),
                                        str(answers)], tmp / "floor.log")
        processes.wait_for_line(tmp / "floor.log", "ready", floor)
        wait_ready(f"http://127.0.0.1:{floor_admin}/ready")
        lite_port = free_port()
        lite = litellm_proxy.start(tmp, lite_port, provider)
        stack.callback(processes.stop, lite)
        lite_pids = {"litellm": lite.pid, **{f"worker{i}": p for i, p in
                                              enumerate(processes.children(lite.pid))}}
        ours_pids = {"server": server, "envoy": ours_envoy}
        floor_pids = {"server": floor.pid, "envoy": floor_envoy.pid}
        yield ([
            Contender("provider, direct (baseline)", "http", f"{provider}/v1/images/generations",
                  f"Bearer {PROVIDER_KEY}", {"fake": fake.pid}),
            Contender("floor, REST", "http", f"http://127.0.0.1:{floor_http}/api/images/generations",
                  "Bearer none", floor_pids),
            Contender("floor, gRPC", "grpc", f"http://127.0.0.1:{floor_http}{GENERATE}",
                  "Bearer none", floor_pids),
            Contender("ours, gRPC", "grpc", f"{ours.base_url}{GENERATE}", f"Bearer {TEST_KEY}",
                  ours_pids),
            Contender("ours, REST", "http", f"{ours.api_url}/images/generations",
                  f"Bearer {TEST_KEY}", ours_pids),
            Contender("LiteLLM proxy", "http", f"http://127.0.0.1:{lite_port}/v1/images/generations",
                  f"Bearer {litellm_proxy.MASTER_KEY}", lite_pids),
        ], ours)


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


def record_answers(ours: Stack, where: Path) -> Path:
    """Our server's answers to the bench's requests, for the floor to give back as they are."""
    where.mkdir(parents=True)
    with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {TEST_KEY}"}) as http:
        for name, body in (("small", REQUEST), ("big", BIG_REQUEST)):
            answer = http.post(f"{ours.api_url}/images/generations", json=body)
            answer.raise_for_status()
            (where / f"rest-{name}.json").write_bytes(answer.content)
    with grpc.insecure_channel(ours.envoy_target, options=[
            ("grpc.max_receive_message_length", 1 << 30)]) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        for name, body in (("small", REQUEST), ("big", BIG_REQUEST)):
            reply = stub.Generate(pb.GenerateRequest(**body),
                                  metadata=[("authorization", f"Bearer {TEST_KEY}")], timeout=120)
            (where / f"grpc-{name}.bin").write_bytes(reply.SerializeToString())
    return where


@dataclass
class Row:
    path: Contender
    result: load.Result
    cpu_ms: dict[str, float]  # CPU per request, by process


def small_requests(paths: list[Contender]) -> dict[int, list[Row]]:
    print("Small requests (one 16x16 PNG as b64_json): latency and throughput", flush=True)
    for path in paths:  # warm every path up: connections, caches, the JIT-less interpreter
        path.run(REQUEST, 4, 1)
    table: dict[int, list[Row]] = {}
    for connections in CONCURRENCY:
        rows = []
        for path in paths:
            before = {name: processes.cpu_seconds(pid) for name, pid in path.pids.items()}
            result = path.run(REQUEST, connections, SECONDS)
            cpu = {name: (processes.cpu_seconds(pid) - before[name]) * 1000
                   / max(1, result.requests) for name, pid in path.pids.items()}
            rows.append(Row(path, result, cpu))
        table[connections] = rows
        print_small(connections, rows)
    return table


def print_small(connections: int, rows: list[Row]) -> None:
    base = rows[0].result
    print(f"\n  concurrency {connections:<3}               p50 ms  p99 ms  +p50 ms  +p99 ms"
          f"     req/s  failed  CPU ms/request")
    for row in rows:
        r = row.result
        added = ("       -        -" if row is rows[0]
                 else f"  {r.p50_ms - base.p50_ms:+7.2f}  {r.p99_ms - base.p99_ms:+7.2f}")
        cpu = ", ".join(f"{name} {ms:.2f}" for name, ms in row.cpu_ms.items())
        print(f"  {row.path.name:34} {r.p50_ms:7.2f} {r.p99_ms:7.2f}{added}  {r.rps:8.0f}"
              f"  {r.failed:6d}  {cpu}")
    print(flush=True)


@dataclass
class BigRow:
    path: Contender
    result: load.Result
    answer_mb: float
    peak_growth_mb: dict[str, float]


def big_requests(paths: list[Contender]) -> list[BigRow]:
    print("n=10 x 1024x1024 b64_json (~2.4 MB noise PNGs), one at a time", flush=True)
    # Growth is counted from each process's size before any large answer: memory a process
    # freed but kept (malloc keeps it) counts against the paths measured after the first.
    baseline = {pid: processes.rss_mb(pid) for path in paths for pid in path.pids.values()}
    sizes = answer_sizes(paths)
    rows = []
    for path in paths:
        for pid in path.pids.values():
            processes.reset_peak(pid)
        before = {name: baseline[pid] for name, pid in path.pids.items()}
        if path.kind == "grpc":
            result = load.h2load(path.url, pb.GenerateRequest(**BIG_REQUEST).SerializeToString(),
                                 path.auth, connections=1, requests=8)
        else:
            result = path.run(BIG_REQUEST, 1, max(SECONDS, 6))
        growth = {name: processes.peak_mb(pid) - before[name] for name, pid in path.pids.items()}
        rows.append(BigRow(path, result, sizes[path.name], growth))
    base = rows[0].result
    print("\n  path                                answer MB  p50 ms  +p50 ms  requests  failed"
          "  peak RSS growth MB (x answer)")
    for row in rows:
        r = row.result
        growth = ", ".join(f"{name} {mb:.0f} ({mb / row.answer_mb:.1f}x)"
                           for name, mb in row.peak_growth_mb.items())
        print(f"  {row.path.name:34} {row.answer_mb:9.1f} {r.p50_ms:7.1f} "
              f"{r.p50_ms - base.p50_ms:+8.1f} {r.requests:9d} {r.failed:7d}  {growth}")
    print(flush=True)
    return rows


def answer_sizes(paths: list[Contender]) -> dict[str, float]:
    sizes = {}
    for path in paths:
        if path.kind == "grpc":
            with grpc.insecure_channel(path.url.split("/")[2], options=[
                    ("grpc.max_receive_message_length", 1 << 30)]) as channel:
                reply = pb_grpc.ImageServiceStub(channel).Generate(
                    pb.GenerateRequest(**BIG_REQUEST), metadata=[("authorization", path.auth)],
                    timeout=120)
            sizes[path.name] = reply.ByteSize() / 1e6
        else:
            answer = httpx.post(path.url, json=BIG_REQUEST, timeout=300,
                                headers={"Authorization": path.auth})
            answer.raise_for_status()
            sizes[path.name] = len(answer.content) / 1e6
    return sizes


def print_pieces(costs: list[tuple[str, float]], small: dict[int, list[Row]]) -> None:
    print("CPU per request of each piece of our path, measured alone (µs)")
    for name, micros in costs:
        print(f"  {name:66} {micros:8.1f}")
    rows = {row.path.name: row for row in small[16]}
    for name in ("ours, REST", "ours, gRPC", "floor, REST", "LiteLLM proxy"):
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in rows[name].cpu_ms.items())
        print(f"  whole request at concurrency 16, {name:32} ms: {cpu}")
    print(flush=True)


def print_targets(small: dict[int, list[Row]], big: list[BigRow],
                  bursts: dict[str, burst.BurstResult]) -> None:
    def row(c: int, name: str) -> load.Result:
        return next(r.result for r in small[c] if r.path.name == name)

    base = row(1, "provider, direct (baseline)")
    grpc_added = row(1, "ours, gRPC").p50_ms - base.p50_ms
    rest_added = row(1, "ours, REST").p50_ms - base.p50_ms
    rest16, lite16, floor16 = (row(16, "ours, REST").rps, row(16, "LiteLLM proxy").rps,
                               row(16, "floor, REST").rps)
    bigs = {r.path.name: r for r in big}
    big_added = (bigs["ours, REST"].result.p50_ms
                 - bigs["provider, direct (baseline)"].result.p50_ms)
    server_cpu = next(r.cpu_ms["server"] for r in small[16] if r.path.name == "ours, REST")
    checks = [
        (f"server CPU per small request (REST, 16 at once, {DATABASE})",
         f"{server_cpu:.2f} ms", "<= 1.5 ms", server_cpu <= 1.5),
        ("added p50, gRPC door, concurrency 1", f"{grpc_added:.2f} ms", "<= 2 ms",
         grpc_added <= 2),
        ("added p50, REST door, concurrency 1", f"{rest_added:.2f} ms", "<= 3 ms",
         rest_added <= 3),
        ("REST req/s at 16 vs LiteLLM", f"{rest16 / lite16:.1f}x", ">= 3x", rest16 >= 3 * lite16),
        ("REST req/s at 16 vs the floor", f"{100 * rest16 / floor16:.0f}%", ">= 50%",
         rest16 >= floor16 / 2),
        ("n=10 b64_json over REST, added to the provider's time", f"{big_added:.0f} ms",
         "<= 150 ms", big_added <= 150),
    ]
    ours_burst = bursts["ours, REST"]
    checks += [
        (f"burst of {BURST_N}: served", f"{ours_burst.served}/{BURST_N}", "all",
         ours_burst.served == BURST_N),
        (f"burst of {BURST_N}: added p50", f"{ours_burst.quantile(0.5):.2f} s", "<= 1 s",
         ours_burst.quantile(0.5) <= 1),
        (f"burst of {BURST_N}: added max", f"{max(ours_burst.added, default=99):.2f} s",
         "<= 2.5 s", max(ours_burst.added, default=99) <= 2.5),
    ]
    for name in ("ours, REST", "ours, gRPC"):
        r = bigs[name]
        ratio = r.peak_growth_mb["server"] / r.answer_mb
        checks.append((f"server peak RSS growth, n=10 b64_json, {name.split(', ')[1]}",
                       f"{ratio:.1f}x the answer", "< 3x", ratio < 3))
    print("\nTargets (issue 16)")
    for name, value, target, met in checks:
        print(f"  {'met ' if met else 'MISS'}  {name:58} {value:>16}  (target {target})")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
