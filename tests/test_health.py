"""Liveness and readiness over REST (through Envoy) and gRPC, the standard gRPC health
service with reflection, and Envoy's own health checks of the server."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from aigne.hub.v1 import probe_service_pb2 as pb
from aigne.hub.v1 import probe_service_pb2_grpc
from service import db
from service.api.probes import ProbeServicer
from service.errors import HubError
from service.ops.admission import Admission
from service.store.filesystem import FilesystemStore
from tests.stack import Stack
from tests.test_bad_input import assert_error


def test_healthz_is_live_without_a_key(stack: Stack) -> None:
    answer = httpx.get(f"{stack.base_url}/healthz")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"status": "ok"}
    assert answer.headers["x-request-id"]


def test_readyz_checks_the_database_and_the_store(stack: Stack) -> None:
    answer = httpx.get(f"{stack.base_url}/readyz")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "ready"
    assert [(c["name"], c["ok"]) for c in body["checks"]] == [("database", True),
                                                              ("image_store", True)]
    assert all(isinstance(c["latency_ms"], int | float) for c in body["checks"])


def test_probes_over_grpc(stack: Stack) -> None:
    with grpc.insecure_channel(stack.envoy_target) as channel:
        probes = probe_service_pb2_grpc.ProbeServiceStub(channel)
        assert probes.Live(pb.LiveRequest(), timeout=5).status == "ok"
        assert probes.Ready(pb.ReadyRequest(), timeout=5).status == "ready"


def test_readyz_is_503_naming_what_failed_and_recovers(tmp_path: Path) -> None:
    store_dir = tmp_path / "images"
    with Stack(tmp_path / "var", {"AIGNE_HUB_STORE_DIR": str(store_dir)}) as stack:
        store_dir.rename(tmp_path / "images.moved")
        store_dir.write_text("the store's volume is gone; a file stands in its place")
        answer = httpx.get(f"{stack.base_url}/readyz")
        body = assert_error(answer, 503, None, "not_ready")
        assert body["message"] == "not ready: image_store: store_unavailable"
        assert str(tmp_path) not in answer.text, "no path in an unauthenticated answer"

        store_dir.unlink()
        (tmp_path / "images.moved").rename(store_dir)
        assert httpx.get(f"{stack.base_url}/readyz").status_code == 200
        assert any(line.get("event") == "readiness check failed" for line in stack.log_lines())


async def test_ready_fails_when_the_database_cannot_answer(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/db-dir/hub.db")
    (tmp_path / "db-dir").rmdir()  # the database's directory is gone: it cannot be opened
    probes = ProbeServicer(database=db.Database(engine), store=FilesystemStore(tmp_path / "images"),
                           admission=Admission(1, frozenset()))
    try:
        with pytest.raises(HubError) as caught:
            await probes.Ready(pb.ReadyRequest(), None)
    finally:
        await engine.dispose()
    assert caught.value.http_status == 503 and caught.value.reason == "NOT_READY"
    assert caught.value.message == "not ready: database: failed (OperationalError)"
    assert caught.value.metadata == {"database": "failed (OperationalError)", "image_store": "ok"}


def test_grpc_health_and_reflection(stack: Stack) -> None:
    with grpc.insecure_channel(stack.server_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "aigne.hub.v1.ImageService", "aigne.hub.v1.ProbeService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for a in answers for s in a.list_services_response.service}
    assert {"aigne.hub.v1.ImageService", "aigne.hub.v1.ProbeService",
            "grpc.health.v1.Health"} <= names
    # Reflection answers without a key: it does not advertise the admin services.
    assert not {"aigne.hub.v1.AdminService", "aigne.hub.v1.DeploymentService"} & names


def test_envoy_health_checks_the_server(stack: Stack) -> None:
    deadline = time.monotonic() + 15
    while True:
        stats = httpx.get(f"{stack.envoy_admin_url}/stats",
                          params={"filter": r"^cluster\.hub_server\.health_check\."}).text
        counters = dict(line.split(": ") for line in stats.splitlines())
        if int(counters["cluster.hub_server.health_check.success"]) >= 1:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.5)
    assert counters["cluster.hub_server.health_check.healthy"] == "1"
    clusters = httpx.get(f"{stack.envoy_admin_url}/clusters").text
    assert f"hub_server::127.0.0.1:{stack.grpc_port}::health_flags::healthy" in clusters

