"""Three server replicas behind one Envoy (`python -m service run --replicas 3`), on SQLite in
WAL mode and on PostgreSQL: a URL made by one replica is served by the others, a quota holds
exactly across them, and under a steady load a replica killed mid-run (SIGKILL) is taken out:
no request fails but those in flight on it, and usage records and quotas stay exact. Then
Ctrl-C (or a killed supervisor) leaves nothing running."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc as pb_grpc
from tests.conftest import GRPC_AUTH
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Received, Reply
from tests.hub import ADMIN_KEY, GENERATIONS, Hub, Key
from tests.replicated import ReplicatedStack, process_alive
from tests.stack import TEST_KEY

PNG = b"\x89PNG\r\n\x1a\n"
WORKERS = 6  # requests in flight at once, at most
PROVIDER_SECONDS = 0.3  # how long the provider takes: requests are in flight for a while
LOAD_BEFORE_KILL = 3.0
LOAD_AFTER_KILL = 5.0


class SlowOpenAI(FakeOpenAI):
    """The fake OpenAI, taking its time over every answer."""

    def answer(self, route: str, request: Received) -> Reply:
        reply = super().answer(route, request)
        reply.delay = PROVIDER_SECONDS
        return reply


@pytest.fixture(scope="module")
def slow_openai() -> Iterator[SlowOpenAI]:
    fake = SlowOpenAI()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def replicated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               slow_openai: SlowOpenAI) -> Iterator[tuple[ReplicatedStack, Hub]]:
    var_dir = tmp_path_factory.mktemp(f"replicas-{request.param}")
    env = {"AIGNE_HUB_ADMIN_API_KEYS": ADMIN_KEY, "OPENAI_API_KEY": slow_openai.api_key,
           "OPENAI_BASE_URL": f"{slow_openai.url}/v1"}
    if request.param == "postgres":
        server = request.getfixturevalue("postgres")
        env["AIGNE_HUB_DATABASE_URL"] = server.create_database(f"hub_{uuid.uuid4().hex[:12]}")
    with ReplicatedStack(var_dir, 3, env) as stack:
        hub = Hub(stack, request.param)  # type: ignore[arg-type]
        yield stack, hub
        hub.close()
        children = stack.children()
    assert not [pid for pid in children if process_alive(pid)], "left running after the stop"


def test_url_made_by_one_replica_is_served_by_every_other(
        replicated: tuple[ReplicatedStack, Hub]) -> None:
    stack, _ = replicated
    for maker in stack.targets:
        with grpc.insecure_channel(maker) as channel:
            reply = pb_grpc.ImageServiceStub(channel).Generate(
                pb.GenerateRequest(prompt=f"made by {maker}", model="local", size="24x24"),
                metadata=GRPC_AUTH, timeout=60)
        url = reply.data[0].url
        query = dict(parse_qsl(urlsplit(url).query))
        request = pb.GetImageRequest(name=urlsplit(url).path.rsplit("/", 1)[1],
                                     expires=int(query["expires"]), signature=query["signature"])
        through_envoy = httpx.get(url, timeout=30)
        assert through_envoy.status_code == 200 and through_envoy.content.startswith(PNG)
        for server in stack.targets:
            with grpc.insecure_channel(server) as channel:
                image = pb_grpc.ImageServiceStub(channel).GetImage(request, timeout=30)
            assert image.data == through_envoy.content, f"{maker} → {server}"


async def test_quota_holds_exactly_across_replicas(
        replicated: tuple[ReplicatedStack, Hub]) -> None:
    stack, hub = replicated
    key = hub.create_key("daily 20 over three replicas", daily_image_quota=20)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as client, \
            grpc.aio.insecure_channel(stack.envoy_target) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        outcomes = await asyncio.gather(
            *(_rest(client, key, model="local", size="32x32") for _ in range(30)),
            *(_grpc(stub, key, model="local", size="32x32") for _ in range(30)))

    assert Counter(o.status for o in outcomes) == {"OK": 20, "DAILY_QUOTA_EXCEEDED": 40}
    assert hub.get_key(key)["images_today"] == 20
    records = hub.records(key)
    assert Counter(r["status"] for r in records) == {"OK": 20, "DAILY_QUOTA_EXCEEDED": 40}
    # Spread over the replicas: every call reached one. (Which replica's calls got the 20
    # images is a race: each replica writes its calls' reservations in one transaction, so
    # the first replica to commit may take them all.)
    log = await _access_log(stack, {o.request_id for o in outcomes})
    served_by = {log[o.request_id]["upstream_host"] for o in outcomes}
    assert len(served_by) >= 2, f"one replica answered every call: {served_by}"


async def test_killed_replica_is_taken_out_and_only_its_requests_fail(
        replicated: tuple[ReplicatedStack, Hub]) -> None:
    stack, hub = replicated
    key = hub.create_key("steady load", daily_image_quota=100_000)
    victim = stack.targets[1]
    victim_pid = stack.pids()[victim]
    outcomes: list[Outcome] = []
    stop = asyncio.Event()

    async def worker(index: int) -> None:
        while not stop.is_set():
            if index % 2:
                outcomes.append(await _grpc(stub, key, **LOAD))
            else:
                outcomes.append(await _rest(client, key, response_format="b64_json", **LOAD))

    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as client, \
            grpc.aio.insecure_channel(stack.envoy_target) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        workers = [asyncio.create_task(worker(i)) for i in range(WORKERS)]
        await asyncio.sleep(LOAD_BEFORE_KILL)
        os.kill(victim_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.sleep(LOAD_AFTER_KILL)
        stop.set()
        await asyncio.gather(*workers)
    out = {"failed_active_hc", "failed_outlier_check"}  # Envoy's flags of a host taken out
    deadline = time.monotonic() + 15
    while not out & set(stack.host_health()[victim].split("/")):
        assert time.monotonic() < deadline, stack.host_health()
        await asyncio.sleep(0.2)

    log = await _access_log(stack, {o.request_id for o in outcomes})
    failures = [o for o in outcomes if not o.ok]
    for failed in failures:  # each was on the killed replica when it died
        assert log[failed.request_id]["upstream_host"] == victim, (failed, log[failed.request_id])
        assert failed.started < killed_at < failed.ended, failed
    assert len(failures) <= WORKERS
    assert {(o.door, o.status) for o in failures} <= {
        ("rest", "SERVICE_UNAVAILABLE"), ("grpc", "UNAVAILABLE")}
    later = [o for o in outcomes if o.started > killed_at]
    assert len(later) > WORKERS and all(o.ok for o in later)
    assert {log[o.request_id]["upstream_host"] for o in later} <= set(stack.targets) - {victim}
    assert all(o.images == 1 for o in outcomes if o.ok)
    print(f"{len(outcomes)} requests, {len(failures)} failed (in flight on {victim}), "
          f"{sum(1 for o in outcomes if int(log[o.request_id]['attempts']) > 1)} retried "
          "on another replica")

    # Usage and quotas: one record per request that reached a server, never two (nothing
    # was replayed); every answered image counted once; only requests cut by the kill may
    # hold a reservation that was never settled (README: the window's reset clears it).
    records = hub.records(key)
    counts = Counter(r["request_id"] for r in records)
    assert max(counts.values()) == 1
    assert set(counts) <= {o.request_id for o in outcomes}
    by_id = {r["request_id"]: r for r in records}
    answered = [o for o in outcomes if o.ok]
    assert all(by_id[o.request_id]["status"] == "OK" and by_id[o.request_id]["images"] == 1
               for o in answered)
    cut = [o for o in failures if o.request_id not in by_id]
    counted = hub.get_key(key).get("images_today", 0)
    recorded = sum(r.get("images", 0) for r in records)
    assert recorded >= len(answered)
    assert 0 <= counted - recorded <= len(cut)


LOAD = {"model": "gpt-image-2", "size": "1024x640", "prompt": "steady"}


@dataclass(frozen=True)
class Outcome:
    request_id: str
    door: str
    started: float
    ended: float
    status: str  # "OK", the error code, or what failed on the way
    images: int

    @property
    def ok(self) -> bool:
        return self.status == "OK"


async def _rest(client: httpx.AsyncClient, key: Key, **body: object) -> Outcome:
    request_id = f"rest-{uuid.uuid4().hex}"
    started = time.monotonic()
    try:
        answer = await client.post(GENERATIONS, json={"prompt": "a burst", **body},
                                   headers={**key.headers, "x-request-id": request_id})
    except httpx.HTTPError as error:
        return Outcome(request_id, "rest", started, time.monotonic(), type(error).__name__, 0)
    ended = time.monotonic()
    if answer.status_code != 200:
        code = answer.json().get("error", {}).get("code") or str(answer.status_code)
        return Outcome(request_id, "rest", started, ended, code.upper(), 0)
    data = answer.json()["data"]
    assert all(base64.b64decode(d["b64_json"]).startswith(PNG) for d in data if "b64_json" in d)
    return Outcome(request_id, "rest", started, ended, "OK", len(data))


async def _grpc(stub: pb_grpc.ImageServiceStub, key: Key, **fields: object) -> Outcome:
    request_id = f"grpc-{uuid.uuid4().hex}"
    started = time.monotonic()
    try:
        reply = await stub.Generate(pb.GenerateRequest(**{"prompt": "a burst", **fields}),
                                    metadata=(*key.metadata, ("x-request-id", request_id)),
                                    timeout=60)
    except grpc.aio.AioRpcError as error:
        return Outcome(request_id, "grpc", started, time.monotonic(), _reason(error), 0)
    return Outcome(request_id, "grpc", started, time.monotonic(), "OK", len(reply.data))


def _reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a gRPC error, else its status code's name."""
    trailers = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers.get("grpc-status-details-bin", b""))
    info = error_details_pb2.ErrorInfo()
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
    return info.reason or error.code().name


async def _access_log(stack: ReplicatedStack, request_ids: set[str]) -> dict[str, dict]:
    """Envoy's access log lines, once they hold these requests (Envoy writes them within
    a second or so)."""
    deadline = time.monotonic() + 20
    while not request_ids <= set(log := stack.access_log()):
        assert time.monotonic() < deadline, f"not in Envoy's log: {request_ids - set(log)}"
        await asyncio.sleep(0.5)
    return log


def test_requests_for_a_dead_replica_go_to_another(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A replica dies while idle: the requests Envoy then sends its way find its port closed
    (they never reached a server) and are tried again on another replica; none fails."""
    with ReplicatedStack(tmp_path_factory.mktemp("replicas-retry"), 3) as stack:
        victim = stack.targets[2]
        os.kill(stack.pids()[victim], signal.SIGKILL)
        answers = [httpx.post(f"{stack.base_url}{GENERATIONS}", timeout=60, json={
            "prompt": "after", "model": "local", "size": "16x16"}, headers={
            "Authorization": f"Bearer {TEST_KEY}", "x-request-id": f"after-{i}"})
            for i in range(9)]
        assert [a.status_code for a in answers] == [200] * 9
        log = asyncio.run(_access_log(stack, {f"after-{i}" for i in range(9)}))
    entries = [log[f"after-{i}"] for i in range(9)]
    retried = [e for e in entries if int(e["attempts"]) > 1]
    assert retried, "no request was sent to the dead replica"
    assert all(e["upstream_host"] != victim for e in entries)


@pytest.mark.parametrize("how", ["ctrl-c", "supervisor killed"])
def test_nothing_is_left_running(how: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    stack = ReplicatedStack(tmp_path_factory.mktemp("replicas-stop"), 2).start()
    try:
        children = stack.children()
        assert len(children) == 3  # Envoy and two replicas
        assert httpx.get(f"{stack.base_url}/api/models", timeout=30,
                         headers={"Authorization": f"Bearer {TEST_KEY}"}).status_code == 200
        if how == "ctrl-c":
            stack.interrupt()
            assert stack.process is not None and stack.process.wait(timeout=60) == 0
        else:
            assert stack.process is not None
            stack.process.kill()
            stack.process.wait()
        deadline = time.monotonic() + 60
        while [pid for pid in children if process_alive(pid)]:
            assert time.monotonic() < deadline, "processes left running"
            time.sleep(0.2)
        for port in (stack.http_port, stack.grpc_port, stack.grpc_port + 1):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    finally:
        stack.stop()


@pytest.mark.parametrize("part", ["Envoy", "a replica"])
def test_a_part_that_dies_makes_the_supervisor_fail_and_say_which(
        part: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Envoy killed after the start once left the supervisor to print "Envoy exited" and
    exit 0, as after a Ctrl-C. Now: Envoy dying stops the replicas at once; a replica dying
    leaves the others serving behind Envoy until the stop. Either way the exit status is 1
    and the last line names the part that died and how."""
    stack = ReplicatedStack(tmp_path_factory.mktemp("replicas-part-dies"), 2).start()
    try:
        assert stack.process is not None
        replicas = list(stack.pids().values())
        victim = ("Envoy", stack.envoy_pid()) if part == "Envoy" else ("replica 1", replicas[1])
        os.kill(victim[1], signal.SIGKILL)
        if part == "a replica":  # the other replica still answers; then Ctrl-C
            time.sleep(1)
            assert stack.process.poll() is None, stack.log_tail()
            assert httpx.get(f"{stack.base_url}/api/models", timeout=30,
                             headers={"Authorization": f"Bearer {TEST_KEY}"}).status_code == 200
            stack.interrupt()
        assert stack.process.wait(timeout=90) == 1, stack.log_tail()
        last = stack.log_tail().strip().splitlines()[-1]
        assert last == (f"error: {victim[0]} (pid {victim[1]}) was killed by SIGKILL. "
                        "Every other part was stopped."), stack.log_tail()
        assert not [pid for pid in [stack.envoy_pid(), *replicas] if process_alive(pid)]
    finally:
        stack.stop()
