"""Building the server from Settings, and running it until SIGTERM/SIGINT.

`create_server(settings)` wires every part and binds (port 0 picks a free port, for tests);
`serve(settings)` runs it, and on a signal marks health NOT_SERVING, stops taking calls and
waits out the grace period for calls in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aigne.hub.v1 import (
    admin_service_pb2_grpc,
    console_service_pb2_grpc,
    deployment_service_pb2_grpc,
    image_service_pb2_grpc,
    job_service_pb2_grpc,
    probe_service_pb2_grpc,
    usage_service_pb2_grpc,
)
from service import db
from service.accounting.configured_keys import ensure_configured_keys
from service.accounting.idempotency import Idempotency
from service.accounting.key_cache import KeyCache
from service.accounting.keys import KeyStore
from service.accounting.quotas import Quotas
from service.accounting.usage import UsageRecorder, UsageReports
from service.api.admin import AdminServicer
from service.api.console import ConsoleServicer
from service.api.deployments import DeploymentServicer
from service.api.images import ImageServicer
from service.api.jobs import JobServicer
from service.api.listing import ModelListing
from service.api.methods import (
    ADMIN_PREFIXES,
    GENERATION_METHODS,
    HEALTH_SERVICE,
    METERED_METHODS,
    PUBLIC_METHODS,
    QUIET_METHODS,
    REFLECTED_SERVICES,
    SERVICES,
)
from service.api.probes import ProbeServicer
from service.api.usage import UsageServicer
from service.catalog.models import ModelRegistry, load_registry
from service.config import Settings
from service.db.batch import BatchWriter
from service.errors import KnownSecrets
from service.generation.inputs import ImageLoader
from service.generation.pipeline import Pipeline, choose_default_model
from service.jobs.runner import Jobs
from service.jobs.setup import background_jobs
from service.jobs.webhooks import Webhooks
from service.net.fetch import GuardedFetcher, image_fetch_limits
from service.ops.admission import Admission
from service.ops.housekeeping import Housekeeping, Sweep
from service.ops.metrics import Metrics
from service.ops.tracing import Tracing
from service.ops.tracing import start as start_tracing
from service.providers.base import ProviderDeps
from service.routing.deployments import DeploymentStore, environment_deployments
from service.routing.policy import routing_policy
from service.routing.router import Router
from service.routing.secretbox import SecretBox
from service.rpc import transport
from service.rpc.interceptor import HubInterceptor
from service.store.storage import ImageStorage, open_storage

log = structlog.get_logger("aigne.hub")

IDEMPOTENCY_SWEEP_SECONDS = 600.0
CUT_OFF_SECONDS = 1.0  # for generations cut off at shutdown to send their 503


@dataclass
class Hub:
    """A built, started server and what it owns."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    parts: Parts
    interceptor: HubInterceptor
    grace: float
    stop_metrics: Callable[[], None]
    tracing: Tracing | None = None

    @property
    def default_model(self) -> str:
        return self.parts.default_model

    @property
    def admission(self) -> Admission:
        return self.parts.admission

    async def drain(self) -> None:
        """Take no new generations, and say so to health checks and readiness probes."""
        self.admission.close()
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float | None = None) -> None:
        """Drain, let the generations in flight finish within `grace` seconds (default: the
        setting), then stop; calls still running after that get a 503 `shutting_down`."""
        grace = self.grace if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        await self.drain()
        try:
            async with asyncio.timeout(grace):
                await self.admission.wait_idle()
        except TimeoutError:
            log.warning("grace period over: cutting off generations in flight",
                        in_flight=self.admission.in_flight, grace_seconds=grace)
            self.admission.cut_off()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CUT_OFF_SECONDS):  # they answer 503
                    await self.admission.wait_idle()
        await self.server.stop(max(0.0, deadline - loop.time()))
        parts = self.parts
        await parts.jobs.stop()  # running jobs get their grace, then go back to the queue
        await parts.housekeeping.stop()
        await parts.key_cache.aclose()
        await parts.pipeline.drain(max(0.0, deadline - loop.time()))
        await self.interceptor.drain()
        await parts.writer.stop()  # what waits is written: acknowledged work is not lost
        await parts.webhooks.aclose()
        await parts.router.aclose()
        await parts.loader.aclose()
        await parts.storage.aclose()
        await parts.database.dispose()
        self.stop_metrics()
        if self.tracing is not None:
            self.tracing.shutdown()


async def create_server(settings: Settings, secrets: KnownSecrets | None = None) -> Hub:
    settings = settings.with_generated_secrets()
    tracing = start_tracing(settings)  # before the SDK clients exist: they get traced
    parts = await build_parts(settings, secrets)
    server, interceptor, health_servicer = grpc_server(settings, parts, tracing)
    port = transport.bind(server, settings)
    await server.start()
    for name in ("", *SERVICES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await parts.jobs.start(parts.pipeline)  # jobs waiting in the database, from before too
    parts.housekeeping.start()
    stop_metrics = (parts.metrics.serve(settings.host, settings.metrics_port)
                    if settings.metrics_port else lambda: None)
    return Hub(server, port, health_servicer, parts, interceptor,
               settings.shutdown_grace_seconds, stop_metrics, tracing)


@dataclass
class Parts:
    """Everything the servicers stand on, built from Settings."""

    database: db.Database
    writer: BatchWriter
    keys: KeyStore
    key_cache: KeyCache
    registry: ModelRegistry
    metrics: Metrics
    admission: Admission
    deployments: DeploymentStore
    router: Router
    default_model: str
    loader: ImageLoader
    quotas: Quotas
    usage: UsageRecorder
    storage: ImageStorage
    idempotency: Idempotency
    pipeline: Pipeline
    webhooks: Webhooks
    jobs: Jobs
    housekeeping: Housekeeping


async def build_parts(settings: Settings, secrets: KnownSecrets | None = None) -> Parts:
    assert settings.key_hash_secret and settings.credentials_key
    database = db.Database.open(settings.db_url)
    await db.migrate(database.engine)
    keys = KeyStore(database, settings.key_hash_secret.get_secret_value().encode())
    await ensure_configured_keys(keys, settings)
    registry = load_registry(settings.models_file)
    metrics = Metrics()
    admission = Admission(settings.max_in_flight_generations, GENERATION_METHODS)
    metrics.watch_admission(admission)
    deployments = DeploymentStore(database, SecretBox(settings.credentials_key.get_secret_value()))
    # One guarded fetcher for every image fetched by URL: source images, provider answers.
    fetcher = GuardedFetcher(image_fetch_limits(settings))
    router = Router(deployments, environment_deployments(settings), routing_policy(settings),
                    ProviderDeps(fetcher, secrets or KnownSecrets(), settings.max_response_bytes),
                    instrument=metrics.instrument)
    loader = ImageLoader(fetcher, settings.max_request_pixels)
    writer = BatchWriter(database)  # reservations, settlements and records: group commit
    # Unsettled a minute past the longest a request takes: a dead process's, swept back.
    quotas = Quotas(database, writer, lease_seconds=settings.reservation_lease_seconds
                    or settings.request_timeout_seconds + 60)
    usage = UsageRecorder(database, settings.credits_per_usd, writer)
    idempotency = Idempotency(database, ttl_seconds=settings.idempotency_keep_seconds,
                              writer=writer)
    storage = await open_storage(settings)
    pipeline = Pipeline(registry=registry, router=router, store=storage.store,
                        signer=storage.urls, loader=loader, idempotency=idempotency,
                        default_model=settings.default_model,
                        fan_out_concurrency=settings.fan_out_concurrency)
    webhooks, jobs = background_jobs(settings, database, keys=keys, usage=usage,
                                     storage=storage)
    housekeeping = Housekeeping([
        Sweep("quota reservations", settings.reservation_sweep_seconds, quotas.sweep),
        Sweep("idempotency keys", IDEMPOTENCY_SWEEP_SECONDS, idempotency.sweep)])
    return Parts(database, writer, keys, KeyCache(keys, settings.db_url, database), registry,
                 metrics, admission, deployments, router,
                 await choose_default_model(settings, registry, router), loader, quotas,
                 usage, storage, idempotency, pipeline, webhooks, jobs, housekeeping)


def grpc_server(settings: Settings, parts: Parts, tracing: Tracing | None = None
                ) -> tuple[grpc.aio.Server, HubInterceptor, health.aio.HealthServicer]:
    """The server with its interceptors (tracing's first, when on) and every servicer,
    health and reflection."""
    interceptor = HubInterceptor(
        parts.key_cache, parts.usage, quotas=parts.quotas,
        public_methods=PUBLIC_METHODS, admin_prefixes=ADMIN_PREFIXES,
        metered_methods=METERED_METHODS, request_timeout=settings.request_timeout_seconds,
        admission=parts.admission, metrics=parts.metrics, quiet_methods=QUIET_METHODS,
        log_prompts=settings.log_prompts)
    server = grpc.aio.server(
        interceptors=[interceptor] if tracing is None else [tracing.interceptor, interceptor],
        options=[("grpc.max_receive_message_length", settings.max_request_bytes),
                 ("grpc.max_send_message_length", settings.max_response_bytes),
                 # Above Envoy's header limit (max_header_bytes): what Envoy passes on is
                 # taken whole, never refused at random (gRPC's soft limit) as a 429.
                 ("grpc.max_metadata_size", settings.grpc_metadata_bytes),
                 ("grpc.absolute_max_metadata_size", settings.grpc_metadata_bytes)])
    add_servicers(server, settings, parts)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*REFLECTED_SERVICES, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    return server, interceptor, health_servicer


def add_servicers(server: grpc.aio.Server, settings: Settings, parts: Parts) -> None:
    storage, registry, router = parts.storage, parts.registry, parts.router
    image_service_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(
        pipeline=parts.pipeline, listing=ModelListing(registry, router), store=storage.store,
        signer=storage.urls, stream_heartbeat=settings.stream_heartbeat_seconds), server)
    job_service_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(
        pipeline=parts.pipeline, jobs=parts.jobs, idempotency=parts.idempotency,
        webhooks=parts.webhooks), server)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(keys=parts.keys, quotas=parts.quotas, models=registry), server)
    usage_service_pb2_grpc.add_UsageServiceServicer_to_server(
        UsageServicer(UsageReports(parts.database)), server)
    deployment_service_pb2_grpc.add_DeploymentServiceServicer_to_server(
        DeploymentServicer(parts.deployments, router, registry), server)
    console_service_pb2_grpc.add_ConsoleServiceServicer_to_server(
        ConsoleServicer(public_base=settings.public_base), server)
    probe_service_pb2_grpc.add_ProbeServiceServicer_to_server(ProbeServicer(
        database=parts.database, store=storage.store, admission=parts.admission), server)


def log_serving(settings: Settings, hub: Hub) -> None:
    log.info("serving", grpc=f"{settings.host}:{hub.port}", default_model=hub.default_model,
             event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0])


async def serve(settings: Settings, secrets: KnownSecrets | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    hub = await create_server(settings, secrets)
    log_serving(settings, hub)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining", grace_seconds=hub.grace, in_flight=hub.admission.in_flight)
    await hub.stop()
    log.info("stopped")
