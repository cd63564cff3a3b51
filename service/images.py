"""The ImageService servicer: short methods that call the parts in order.

    route the model → check the request → load input images → fan out to the provider
    → conform the images → store them (url) or embed them (b64_json) → answer

It never imports an SDK and never builds an error body: it raises HubError.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, date, datetime
from email.utils import format_datetime

import structlog
from google.api import httpbody_pb2

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc as pb_grpc
from service import answers, json_codec, validation
from service.errors import NotFound
from service.generation import RetryPolicy, conform, fan_out
from service.inputs import ImageLoader
from service.interceptors import Call, current_call
from service.models import Lifecycle, ModelRegistry, ModelSpec, Route
from service.providers import Providers
from service.providers.base import GeneratedImage, Generation
from service.store.base import ImageStore
from service.store.signing import UrlSigner

log = structlog.get_logger("aigne.hub")


class ImageServicer(pb_grpc.ImageServiceServicer):
    def __init__(self, *, registry: ModelRegistry, providers: Providers, store: ImageStore,
                 signer: UrlSigner, loader: ImageLoader, default_model: str,
                 fan_out_concurrency: int, retry: RetryPolicy) -> None:
        self._registry = registry
        self._providers = providers
        self._store = store
        self._signer = signer
        self._loader = loader
        self._default_model = default_model
        self._concurrency = fan_out_concurrency
        self._retry = retry
        self._warned: set[tuple[str, str]] = set()

    async def Generate(self, request: pb.GenerateRequest,  # type: ignore[override]
                       context: object) -> answers.Wire:
        return answers.grpc_answer(*await self._generate(request))

    async def GenerateHttp(self, request: pb.GenerateHttpRequest,  # type: ignore[override]
                           context: object) -> answers.Wire:
        generate_request = json_codec.decode(request.body.data, pb.GenerateRequest)
        return answers.rest_answer(*await self._generate(generate_request))

    async def _generate(self, request: pb.GenerateRequest
                        ) -> tuple[pb.GenerateResponse, list[bytes | None]]:
        """The answer without its image bytes, and those bytes (None for `url` images): the
        doors write them into their answers once (service.answers)."""
        call = current_call()
        route = self._registry.route(request.model or self._default_model)
        call.model, call.served = route.requested.name, route.served.name
        call.prompt = request.prompt
        plan = validation.plan(request, route)
        provider = self._providers.for_model(route.served)
        call.response_format = plan.response_format
        call.log.update(n=plan.job.n)
        job = replace(plan.job, images=await self._loader.load(plan.image_sources),
                      deadline=call.deadline, request_id=call.request_id)
        generation = await fan_out(provider, job, concurrency=self._concurrency,
                                   seconds_left=call.remaining(), retry=self._retry)
        call.upstream_seconds = generation.upstream_seconds
        images = await conform(generation.images, plan)
        call.images, call.image_bytes = len(images), sum(len(i.data) for i in images)
        self._lifecycle_headers(call, route)
        data, payloads = await self._answer(images, plan)
        return pb.GenerateResponse(
            created=int(call.accepted_at), data=data,
            usage=_usage(generation), output_format=plan.output_format,
            background=plan.job.background if plan.job.background != "auto" else None), payloads

    async def GetImage(self, request: pb.GetImageRequest, context: object) -> httpbody_pb2.HttpBody:
        self._signer.verify(request.name, request.expires, request.signature)
        data, content_type = await self._store.get(request.name)
        call = current_call()
        call.response_format, call.images, call.image_bytes = "file", 1, len(data)
        return httpbody_pb2.HttpBody(content_type=content_type, data=data)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: object) -> pb.ListModelsResponse:
        specs = sorted(self._registry, key=lambda s: (s.provider != "local", s.provider, s.name))
        return pb.ListModelsResponse(object="list", data=[self._model(s) for s in specs])

    def _model(self, spec: ModelSpec) -> pb.Model:
        try:
            route: Route | None = self._registry.route(spec.name)
        except NotFound:  # retired, and an operator switched its translation off
            route = None
        served = route.served if route else spec
        rule = spec.size_rule
        return pb.Model(
            id=spec.name, object="model", owned_by=spec.owned_by or spec.provider,
            provider=spec.provider, description=spec.description, sizes=spec.sizes,
            size_rule=pb.SizeRule(
                multiple_of=rule.multiple_of, min_edge=rule.min_edge, max_edge=rule.max_edge,
                max_ratio=0 if rule.max_ratio == float("inf") else rule.max_ratio,
                min_pixels=rule.min_pixels, max_pixels=rule.max_pixels or 0) if rule else None,
            aspect_ratios=spec.aspect_ratios, default_size=spec.default_size,
            max_n_per_call=spec.max_n_per_call, qualities=spec.qualities,
            default_quality=spec.default_quality, styles=spec.styles,
            output_formats=spec.output_formats, backgrounds=spec.backgrounds,
            moderations=spec.moderations, edits=spec.edits,
            max_input_images=spec.max_input_images, prompt_limit=spec.prompt_limit,
            lifecycle=(route.lifecycle if route else Lifecycle.RETIRED).value,
            deprecated_on=_iso(spec.deprecated_on), shutdown_on=_iso(spec.shutdown_on),
            successor=spec.successor or "", available=route is not None,
            served_by=served.name if route else "",
            provider_configured=self._providers.is_configured(served.provider))

    async def _answer(self, images: list[GeneratedImage],
                      plan: validation.GenerationPlan
                      ) -> tuple[list[pb.Image], list[bytes | None]]:
        if plan.response_format == "b64_json":
            return ([pb.Image(revised_prompt=i.revised_prompt) for i in images],
                    [i.data for i in images])
        names = await asyncio.gather(*(self._store.put(i.data, i.mime_type) for i in images))
        return ([pb.Image(url=self._signer.url(name), revised_prompt=image.revised_prompt)
                 for name, image in zip(names, images, strict=True)], [None] * len(images))

    def _lifecycle_headers(self, call: Call, route: Route) -> None:
        """Name the model that served; announce deprecation and sunset (RFC 9745, RFC 8594)."""
        call.response_headers.append(("x-model-served", route.served.name))
        spec = route.requested
        if route.lifecycle is Lifecycle.ACTIVE:
            return
        if spec.deprecated_on:
            call.response_headers.append(("deprecation", f"@{_epoch(spec.deprecated_on)}"))
        if spec.shutdown_on:
            call.response_headers.append(("sunset", _http_date(spec.shutdown_on)))
        key_id = call.key.id if call.key else ""
        if route.lifecycle is Lifecycle.DEPRECATED and (key_id, spec.name) not in self._warned:
            self._warned.add((key_id, spec.name))
            log.warning("deprecated model", model=spec.name, key_id=key_id,
                        shutdown_on=str(spec.shutdown_on), successor=spec.successor)


def _usage(generation: Generation) -> pb.ImageUsage | None:
    usage = generation.usage
    if usage is None:
        return None
    inputs = usage.input_text + usage.input_image
    outputs = usage.output_text + usage.output_image
    return pb.ImageUsage(
        total_tokens=inputs + outputs, input_tokens=inputs, output_tokens=outputs,
        input_tokens_details=pb.TokenDetails(text_tokens=usage.input_text,
                                             image_tokens=usage.input_image),
        output_tokens_details=pb.TokenDetails(text_tokens=usage.output_text,
                                              image_tokens=usage.output_image))


def _iso(day: date | None) -> str:
    return day.isoformat() if day else ""


def _epoch(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _http_date(day: date) -> str:
    return format_datetime(datetime(day.year, day.month, day.day, tzinfo=UTC), usegmt=True)
