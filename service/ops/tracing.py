"""Traces: OpenTelemetry's SDK, set up from Settings when OTEL_EXPORTER_OTLP_ENDPOINT is set.

Unset, nothing here runs: no tracer provider (the API's no-op one answers the few spans the
pipeline opens), no exporter, no instrumentation. Set, one TracerProvider with the
configured sampler and a batch OTLP exporter (gRPC or HTTP/protobuf); the gRPC server gets
the instrumentation's interceptor (a SERVER span per call, continuing the caller's or
Envoy's `traceparent`); aiohttp (the openai and google-genai SDKs, webhooks, source images)
and httpx clients get theirs, so every upstream call is a CLIENT span that sends
`traceparent` on. Every value comes from Settings: the SDK reads no variable of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import yarl
from opentelemetry import trace
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from service.config import Settings

SAMPLERS = {
    "always_on": lambda ratio: sampling.ALWAYS_ON,
    "always_off": lambda ratio: sampling.ALWAYS_OFF,
    "traceidratio": sampling.TraceIdRatioBased,
    "parentbased_always_on": lambda ratio: sampling.ParentBased(sampling.ALWAYS_ON),
    "parentbased_always_off": lambda ratio: sampling.ParentBased(sampling.ALWAYS_OFF),
    "parentbased_traceidratio": lambda ratio: sampling.ParentBased(
        sampling.TraceIdRatioBased(ratio)),
}


@dataclass
class Tracing:
    """The running SDK: its provider, and the interceptor the gRPC server puts first."""

    provider: TracerProvider
    interceptor: grpc.aio.ServerInterceptor

    def shutdown(self) -> None:
        """Export what is left and stop (at the server's end)."""
        AioHttpClientInstrumentor().uninstrument()
        HTTPXClientInstrumentor().uninstrument()
        self.provider.shutdown()


def sampler(settings: Settings) -> sampling.Sampler:
    """OTEL_TRACES_SAMPLER with OTEL_TRACES_SAMPLER_ARG, as OpenTelemetry defines them."""
    return SAMPLERS[settings.otel_traces_sampler](settings.otel_traces_sampler_arg)


def exporter(settings: Settings) -> SpanExporter:
    """The OTLP exporter of OTEL_EXPORTER_OTLP_PROTOCOL, to OTEL_EXPORTER_OTLP_ENDPOINT (for
    HTTP, the spec's signal path `/v1/traces` is added to it)."""
    endpoint = settings.otel_exporter_otlp_endpoint or ""
    if settings.otel_exporter_otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )
        return GrpcExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )
    return HttpExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")


def _without_query(url: yarl.URL) -> str:
    """An outgoing call's URL as its span tells it: no query, where signatures and tokens
    of presigned source images or webhook URLs would be (the instrumentations redact only a
    few parameter names, not SigV4's X-Amz-Signature)."""
    return str(url.with_query(None).with_fragment(None))


def _httpx_url(span: Any, request: Any) -> None:
    """httpx's spans (source images, webhooks): their URL without its query, as above."""
    if span.is_recording():
        url = _without_query(yarl.URL(str(request.url)))
        span.set_attributes({"http.url": url, "url.full": url})


async def _httpx_async(span: Any, request: Any) -> None:
    _httpx_url(span, request)


def start(settings: Settings) -> Tracing | None:
    """The SDK, running and installed as the global tracer provider; None (and nothing set
    up) when no endpoint is configured."""
    if not settings.tracing:
        return None
    provider = TracerProvider(sampler=sampler(settings),
                              resource=Resource.create({SERVICE_NAME: settings.otel_service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter(settings)))
    trace.set_tracer_provider(provider)
    AioHttpClientInstrumentor().instrument(tracer_provider=provider, url_filter=_without_query)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider,
                                         request_hook=_httpx_url, async_request_hook=_httpx_async)
    interceptor = aio_server_interceptor(tracer_provider=provider,
                                         filter_=filters.negate(filters.health_check()))
    return Tracing(provider, interceptor)
