"""Building the server from Settings, and running it until SIGTERM/SIGINT.

`create_server(settings)` wires every part and binds (port 0 picks a free port, for tests);
`serve(settings)` runs it, and on a signal drains: health says NOT_SERVING, readiness
fails, new generations are refused (503 `shutting_down`), the ones in flight finish
within the grace period (AIGNE_HUB_SHUTDOWN_GRACE_SECONDS), then the server stops.
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
from sqlalchemy.ext.asyncio import AsyncEngine

from aigne.hub.v1 import (
    image_service_pb2,
    image_service_pb2_grpc,
    probe_service_pb2,
    probe_service_pb2_grpc,
)
from service import db
from service.admission import Admission
from service.config import Settings
from service.generation import RetryPolicy
from service.health import ProbeServicer
from service.images import ImageServicer
from service.inputs import FetchLimits, ImageLoader
from service.interceptors import HubInterceptor
from service.key_cache import KeyCache
from service.keys import KeyStore
from service.metrics import Metrics
from service.models import ModelRegistry, load_registry
from service.providers import Providers
from service.store.filesystem import FilesystemStore
from service.store.signing import UrlSigner

log = structlog.get_logger("aigne.hub")

SERVICE_NAME = image_service_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name
PROBE_SERVICE = probe_service_pb2.DESCRIPTOR.services_by_name["ProbeService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
QUIET_METHODS = frozenset({
    f"/{PROBE_SERVICE}/Live",
    f"/{PROBE_SERVICE}/Ready",
    f"/{HEALTH_SERVICE}/Check",
})
PUBLIC_METHODS = frozenset({f"/{SERVICE_NAME}/GetImage", *QUIET_METHODS})
CUT_OFF_SECONDS = 1.0  # for generations cut off at shutdown to send their 503
GENERATION_METHODS = frozenset({f"/{SERVICE_NAME}/Generate", f"/{SERVICE_NAME}/GenerateHttp"})


@dataclass
class Hub:
    """A built, started server and what it owns."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    engine: AsyncEngine
    keys: KeyStore
    providers: Providers
    loader: ImageLoader
    default_model: str
    admission: Admission
    grace: float
    stop_metrics: Callable[[], None]

    async def drain(self) -> None:
        """Take no new generations, and say so to health checks and readiness probes."""
        self.admission.close()
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float | None = None) -> None:
        """Drain, let the generations in flight finish within `grace` seconds (default: the
        setting), then stop; calls still running after that are cancelled."""
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
        await self.providers.aclose()
        await self.loader.aclose()
        await self.engine.dispose()
        self.stop_metrics()


async def create_server(settings: Settings) -> Hub:
    settings = settings.with_generated_secrets()
    assert settings.signing_secret and settings.key_hash_secret
    engine = db.create_engine(settings.db_url)
    await db.migrate(engine)
    keys = KeyStore(db.sessions(engine), settings.key_hash_secret.get_secret_value().encode())
    for token in settings.static_api_keys:
        await keys.ensure(token, f"from AIGNE_HUB_API_KEYS ({token[:8]}…)", admin=False,
                          source="env")
    registry = load_registry(settings.models_file)
    metrics = Metrics()
    admission = Admission(settings.max_in_flight_generations, GENERATION_METHODS)
    metrics.watch_admission(admission)
    providers = Providers(settings, instrument=metrics.instrument)
    default_model = choose_default_model(settings, registry, providers)
    loader = ImageLoader(FetchLimits(settings.image_url_hosts, settings.image_fetch_max_bytes,
                                     settings.image_fetch_timeout_seconds))
    store = FilesystemStore(settings.images_dir)
    servicer = ImageServicer(
        registry=registry, providers=providers, store=store,
        signer=UrlSigner(settings.signing_secret.get_secret_value().encode(),
                         settings.public_base, settings.url_ttl_seconds),
        loader=loader, default_model=default_model,
        fan_out_concurrency=settings.fan_out_concurrency,
        retry=RetryPolicy(retries=settings.upstream_retries,
                          base_seconds=settings.upstream_retry_base_seconds))
    server = grpc.aio.server(
        interceptors=[HubInterceptor(KeyCache(keys, settings.db_url),
                                     public_methods=PUBLIC_METHODS,
                                     request_timeout=settings.request_timeout_seconds,
                                     admission=admission, metrics=metrics,
                                     quiet_methods=QUIET_METHODS,
                                     log_prompts=settings.log_prompts)],
        options=[("grpc.max_receive_message_length", settings.max_request_bytes),
                 ("grpc.max_send_message_length", settings.max_response_bytes)])
    image_service_pb2_grpc.add_ImageServiceServicer_to_server(servicer, server)
    probe_service_pb2_grpc.add_ProbeServiceServicer_to_server(
        ProbeServicer(engine=engine, store=store, admission=admission), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, PROBE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    await server.start()
    for name in ("", SERVICE_NAME, PROBE_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop_metrics = (metrics.serve(settings.host, settings.metrics_port)
                    if settings.metrics_port else lambda: None)
    return Hub(server, port, health_servicer, engine, keys, providers, loader, default_model,
               admission, settings.shutdown_grace_seconds, stop_metrics)


def choose_default_model(settings: Settings, registry: ModelRegistry,
                         providers: Providers) -> str:
    """The configured default; unset, dall-e-2 (the contract's) if its provider is set up,
    else the local renderer, so a fresh machine answers with a real image."""
    if settings.default_model:
        registry.get(settings.default_model)
        return settings.default_model
    contract_default = registry.get("dall-e-2")
    served = registry.route(contract_default.name).served
    if providers.is_configured(served.provider):
        return contract_default.name
    log.warning("no provider key is set: requests that name no model go to the local "
                "renderer ('local'); set OPENAI_API_KEY to use dall-e-2 as the default")
    return "local"


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    hub = await create_server(settings)
    log.info("serving", grpc=f"{settings.host}:{hub.port}", default_model=hub.default_model)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining", grace_seconds=hub.grace, in_flight=hub.admission.in_flight)
    await hub.stop()
    log.info("stopped")
