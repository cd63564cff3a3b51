"""Prometheus metrics, served on their own port (AIGNE_HUB_METRICS_PORT, on AIGNE_HUB_HOST).

The interceptor reports every call when it starts and when it ends (`started`,
`finished`), passing its call as a `MeasuredCall`, the few things these metrics read of it
(ops sits below the gRPC edge and imports nothing from it); providers are wrapped once at
start-up (`instrument`) so every upstream call is timed and every upstream failure counted
by its reason. Labels only ever take values
from bounded sets (method names, the registry's model names, error reasons), never from
what a caller typed, so fuzzing the API cannot blow up the number of series.

Envoy's own statistics stay on Envoy's admin port (127.0.0.1, `/stats/prometheus`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from service.errors import HubError
from service.providers.base import Generation, ImageJob, Provider

if TYPE_CHECKING:
    from service.accounting.charge import Charge
    from service.catalog.deployments import Deployment
    from service.ops.admission import Admission

# From a millisecond (our own overhead) to the five-minute request budget.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class MeasuredCall(Protocol):
    """What the request metrics read of a call (service.rpc.call.Call is one)."""

    @property
    def method(self) -> str:
        """The RPC's name, without its service."""

    @property
    def door(self) -> str:
        """The door the call came through: grpc or rest."""

    @property
    def model(self) -> str:
        """The registry's name of the model asked for ('' before it is known)."""

    @property
    def served(self) -> str:
        """The registry's name of the model that answered ('' if none did)."""

    @property
    def charge(self) -> Charge:
        """What the call handed out: images, their bytes and response_format."""

    def elapsed(self) -> float:
        """Seconds since the call arrived."""


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "aigne_hub_requests", "Calls answered, by RPC method, door (grpc or rest), model "
            "asked for ('' before it is known) and status (OK or the error reason).",
            ["method", "door", "model", "status"], registry=r)
        self.duration = Histogram(
            "aigne_hub_request_duration_seconds", "Time from a call's arrival at the server "
            "to its answer.", ["method", "door", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "aigne_hub_requests_in_flight", "Calls being handled now.", ["method"], registry=r)
        self.upstream_duration = Histogram(
            "aigne_hub_upstream_duration_seconds", "Time of one successful provider call, by "
            "provider, deployment and model served.", ["provider", "deployment", "model"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter(
            "aigne_hub_upstream_errors", "Failed provider calls (retries and fallbacks "
            "included), by provider, deployment, model served and reason.",
            ["provider", "deployment", "model", "reason"], registry=r)
        self.images = Counter(
            "aigne_hub_images", "Images returned, by model served and response_format.",
            ["model", "response_format"], registry=r)
        self.image_bytes = Counter(
            "aigne_hub_image_bytes", "Bytes of image files returned (b64_json), stored "
            "(url), or served from the store (file).", ["model", "response_format"],
            registry=r)

    def watch_admission(self, admission: Admission) -> None:
        """Gauges read from the admission control when scraped."""
        Gauge("aigne_hub_generations_in_flight", "Generations running now.",
              registry=self.registry).set_function(lambda: admission.in_flight)
        Gauge("aigne_hub_generations_limit", "Generations this process runs at once at most "
              "(AIGNE_HUB_MAX_IN_FLIGHT_GENERATIONS).",
              registry=self.registry).set_function(lambda: admission.limit)
        Gauge("aigne_hub_draining", "1 while the server drains for shutdown.",
              registry=self.registry).set_function(lambda: int(admission.closed))

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: prometheus_client checks and locks on every
        `labels` call (~8 us each, seven a request); the label sets are bounded."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def started(self, call: MeasuredCall) -> None:
        self.child(self.in_flight, call.method).inc()

    def finished(self, call: MeasuredCall, status: str) -> None:
        self.child(self.in_flight, call.method).dec()
        self.child(self.requests, call.method, call.door, call.model, status).inc()
        self.child(self.duration, call.method, call.door, call.model).observe(call.elapsed())
        charge = call.charge
        if charge.bytes:
            model = call.served or call.model
            response_format = charge.response_format or ""
            self.child(self.images, model, response_format).inc(charge.images)
            self.child(self.image_bytes, model, response_format).inc(charge.bytes)

    def instrument(self, provider: Provider, deployment: Deployment) -> Provider:
        """`provider`, the client of `deployment`, with its calls timed and its failures
        counted (labels: the registry's provider name and the deployment's name)."""
        return MeteredProvider(provider, self, deployment.provider, deployment.name)

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serve `/metrics` on `host:port` in a thread; answer the function that stops it."""
        server, thread = start_http_server(port, host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop


class MeteredProvider:
    """A provider whose calls are timed and whose failures are counted."""

    def __init__(self, provider: Provider, metrics: Metrics, provider_name: str,
                 deployment: str) -> None:
        self.name = provider.name
        self._provider = provider
        self._metrics = metrics
        self._labels = (provider_name, deployment)

    async def generate(self, job: ImageJob) -> Generation:
        started = time.perf_counter()
        try:
            generation = await self._provider.generate(job)
        except HubError as error:
            self._metrics.child(self._metrics.upstream_errors, *self._labels, job.model.name,
                                error.reason).inc()
            raise
        self._metrics.child(self._metrics.upstream_duration, *self._labels,
                            job.model.name).observe(
            generation.upstream_seconds or time.perf_counter() - started)
        return generation

    async def aclose(self) -> None:
        await self._provider.aclose()
