"""`python -m service run --replicas N` (`make run REPLICAS=N`): N server processes
(`python -m service serve`) on consecutive ports from AIGNE_HUB_GRPC_PORT, and one Envoy
balancing over them, on one machine.

They share what a replica must share: the database (SQLite in WAL mode is fine for a few
local processes; PostgreSQL for more, or for several machines), the image store, and the
signing and key-hash secrets (generated once into var/ before any replica starts, then read
by all). Envoy checks each replica's gRPC health and takes out one that dies; requests that
never reached it go to another (envoy/envoy.yaml.tmpl, "scale-out").

Every child runs in its own process group, so Ctrl-C reaches only this supervisor, which
then stops the replicas (each drains its calls in flight, through the still-running Envoy)
and then Envoy. Children are also told to die with it (PR_SET_PDEATHSIG): nothing is left
running, even if the supervisor is killed. A replica that dies is not restarted: Envoy
balances over the others, and the supervisor stops when none is left. Envoy dying stops
everything at once. Whatever part died, the supervisor's exit status then says so (1), and
its last line names the parts that died: a wrapper (systemd, a shell loop) sees a failure,
never a clean stop.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service import db
from service.accounting.keys import KeyStore
from service.config import Settings
from service.ops import envoy

log = structlog.get_logger("aigne.hub")

START_SECONDS = 60.0
STOP_SECONDS = 45.0  # the server's drain (30 s) and a margin, then SIGKILL
POLL_SECONDS = 0.2
SIGNALS = frozenset(int(s) for s in signal.Signals)


@dataclass
class Replica:
    index: int
    port: int
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, settings: Settings, index: int) -> Replica:
        port = settings.grpc_port + index
        # Per-process ports other than gRPC (Prometheus metrics, where configured) get the
        # same offset, so replicas on one machine do not collide.
        metrics_port = settings.metrics_port + index if settings.metrics_port else 0
        env = settings.child_environment(grpc_port=port, metrics_port=metrics_port)
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"], env=env,
            process_group=0, preexec_fn=envoy.die_with_parent)
        return cls(index, port, process)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None


async def run(settings: Settings, count: int,
              welcome: Callable[[KeyStore, Settings], Awaitable[str]]) -> int:
    """Run `count` replicas and Envoy until Ctrl-C or SIGTERM, or until Envoy or the last
    replica exits. `welcome` says which API key to use (and makes the first one, on a first
    start). The exit status: 0 for a stop asked for with every part running, 1 if any part
    exited by itself (named on stderr, after the rest were stopped)."""
    settings = settings.with_generated_secrets()  # once, into var/, before any replica reads
    upstreams = [(settings.host, settings.grpc_port + i) for i in range(count)]
    # Every child first, while this process has no threads yet (preexec_fn after fork).
    proxy = envoy.start(envoy.write_config(settings, settings.var_dir / "envoy.yaml", upstreams),
                        concurrency=settings.envoy_concurrency)
    replicas = [Replica.start(settings, i) for i in range(count)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    died: list[str] = []
    try:
        if not await _wait_serving(proxy, replicas, stop, settings):
            return 0
        key_note = await _welcome(settings, welcome)
        lines = "\n".join(f"  replica {r.index}  {settings.host}:{r.port} (pid {r.process.pid})"
                          for r in replicas)
        print(f"\nAIGNE Hub image service, {count} replicas behind Envoy\n"
              f"  REST  POST {settings.edge_url}/api/images/generations\n"
              f"  gRPC  {settings.host}:{settings.http_port} (Envoy, pid {proxy.pid})\n"
              f"{lines}\n  {key_note}\n  Ctrl-C stops them all.\n", flush=True)
        died = await _until_stopped(proxy, replicas, stop)
    finally:
        await _stop(proxy, replicas)
    if died:
        print(f"error: {'; '.join(died)}. Every other part was stopped.", file=sys.stderr,
              flush=True)
        return 1
    return 0


async def _wait_serving(proxy: subprocess.Popen[bytes], replicas: list[Replica],
                        stop: asyncio.Event, settings: Settings) -> bool:
    """Wait until every replica answers SERVING; False if told to stop first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_SECONDS
    waiting = list(replicas)
    while waiting:
        if stop.is_set():
            return False
        if any(not r.alive() for r in waiting):
            raise RuntimeError("a replica exited while starting: see the log above")
        if proxy.poll() is not None:
            raise RuntimeError("Envoy exited while starting: see the log above")
        if loop.time() > deadline:
            raise RuntimeError(f"replicas not serving after {START_SECONDS:.0f} s: "
                               + ", ".join(r.target for r in waiting))
        waiting = [r for r in waiting if not await _serving(r.target, settings)]
        await asyncio.sleep(POLL_SECONDS if waiting else 0)
    return True


async def _serving(target: str, settings: Settings) -> bool:
    """Whether a replica answers SERVING (with mTLS to the servers, as Envoy would ask)."""
    if settings.upstream_tls:
        assert settings.upstream_tls_ca_file and settings.upstream_tls_client_cert_file
        assert settings.upstream_tls_client_key_file
        channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(
            settings.upstream_tls_ca_file.read_bytes(),
            settings.upstream_tls_client_key_file.read_bytes(),
            settings.upstream_tls_client_cert_file.read_bytes()))
    else:
        channel = grpc.aio.insecure_channel(target)
    async with channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def _welcome(settings: Settings, welcome: Callable[[KeyStore, Settings], Awaitable[str]]
                   ) -> str:
    assert settings.key_hash_secret is not None
    database = db.Database.open(settings.db_url)
    try:  # the replicas have migrated the database by now
        keys = KeyStore(database, settings.key_hash_secret.get_secret_value().encode())
        return await welcome(keys, settings)
    finally:
        await database.dispose()


async def _until_stopped(proxy: subprocess.Popen[bytes], replicas: list[Replica],
                         stop: asyncio.Event) -> list[str]:
    """Wait for Ctrl-C or SIGTERM, or for Envoy or the last replica to exit. What exited by
    itself meanwhile, each part named (empty: a stop asked for, everything running)."""
    died: list[str] = []
    running = {r.index for r in replicas}
    while not stop.is_set():
        for replica in replicas:
            if replica.index in running and not replica.alive():
                running.discard(replica.index)
                died.append(_exited(f"replica {replica.index}", replica.process))
                log.warning("replica exited; Envoy balances over the others",
                            replica=replica.index, port=replica.port,
                            returncode=replica.process.returncode, left=len(running))
        if proxy.poll() is not None:
            died.append(_exited("Envoy", proxy))
            print(f"{died[-1]}; stopping the replicas.", file=sys.stderr, flush=True)
            break
        if not running:
            print("No replica is left; stopping Envoy.", file=sys.stderr, flush=True)
            break
        try:
            await asyncio.wait_for(stop.wait(), POLL_SECONDS)
        except TimeoutError:
            continue
    return died


def _exited(name: str, process: subprocess.Popen[bytes]) -> str:
    """`name` (pid ...) and how it ended: its exit status, or the signal that killed it."""
    code = process.returncode
    how = f"exited with status {code}"
    if code < 0:
        how = f"was killed by {signal.Signals(-code).name if -code in SIGNALS else -code}"
    return f"{name} (pid {process.pid}) {how}"


async def _stop(proxy: subprocess.Popen[bytes], replicas: list[Replica]) -> None:
    """Replicas first (each drains its calls in flight, still reached through Envoy), then
    Envoy. Whatever does not stop in time is killed."""
    for replica in replicas:
        if replica.alive():
            replica.process.send_signal(signal.SIGTERM)
    await _wait_exit([r.process for r in replicas], STOP_SECONDS)
    if proxy.poll() is None:
        proxy.terminate()
    await _wait_exit([proxy], 10)


async def _wait_exit(processes: list[subprocess.Popen[bytes]], seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await asyncio.gather(*(asyncio.to_thread(p.wait) for p in processes))
    except TimeoutError:
        pass
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
