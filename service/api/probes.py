"""Liveness and readiness: `GET /healthz` and `GET /readyz` (ProbeService), and the standard
gRPC health service that Envoy and gRPC load balancers check.

Liveness only says the process answers. Readiness runs the checks each time it is asked,
concurrently and each within a time limit: the database answers `SELECT 1`, the image
store takes a small write, and the server is not draining. A failing check makes the call
fail with UNAVAILABLE (HTTP 503) naming it; the details go to the log, not to the caller
(the probe needs no key, so it never shows a path or an address).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from aigne.hub.v1 import probe_service_pb2 as pb
from aigne.hub.v1 import probe_service_pb2_grpc as pb_grpc
from service.db import Database
from service.errors import HubError, Unavailable
from service.ops.admission import Admission
from service.store.base import ImageStore

log = structlog.get_logger("aigne.hub")

CHECK_TIMEOUT_SECONDS = 2.0


class ProbeServicer(pb_grpc.ProbeServiceServicer):
    def __init__(self, *, database: Database, store: ImageStore, admission: Admission) -> None:
        self._checks: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
            ("database", database.ping), ("image_store", store.check))
        self._admission = admission

    async def Live(self, request: pb.LiveRequest, context: object) -> pb.LiveResponse:
        return pb.LiveResponse(status="ok")

    async def Ready(self, request: pb.ReadyRequest, context: object) -> pb.ReadyResponse:
        if self._admission.closed:
            raise Unavailable("not ready: the server is shutting down", reason="NOT_READY",
                              metadata={"draining": "true"}, retry_after=1)
        results = await asyncio.gather(*(_timed(name, check) for name, check in self._checks))
        failures = {name: problem for name, _, problem in results if problem}
        if failures:
            raise Unavailable(
                "not ready: " + "; ".join(f"{name}: {p}" for name, p in failures.items()),
                reason="NOT_READY", retry_after=5,
                metadata={name: failures.get(name, "ok") for name, _ in self._checks})
        return pb.ReadyResponse(status="ready", checks=[
            pb.ReadinessCheck(name=name, ok=True, latency_ms=round(ms, 2))
            for name, ms, _ in results])


async def _timed(name: str, check: Callable[[], Awaitable[None]]) -> tuple[str, float, str]:
    """Run one check: its name, how long it took (ms), and what went wrong ('' if nothing)."""
    started = time.perf_counter()
    problem = ""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await check()
    except TimeoutError:
        problem = f"no answer within {CHECK_TIMEOUT_SECONDS:.0f} s"
    except HubError as error:
        problem = error.reason.lower()
    except Exception as exc:
        problem = f"failed ({type(exc).__name__})"
    if problem:
        log.warning("readiness check failed", check=name, problem=problem, exc_info=True)
    return name, (time.perf_counter() - started) * 1000, problem
