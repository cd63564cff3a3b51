"""The ImageService servicer: short methods that call the parts in order.

    route the model → check the request → reserve quota → load input images
    → fan out to the provider → conform the images → store them (url) or embed them
    (b64_json) → answer

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
from service import json_codec, validation
from service.generation import conform, fan_out
from service.inputs import ImageLoader
from service.interceptors import Call, current_call
from service.listing import ModelListing
from service.models import Lifecycle, ModelRegistry, Route
from service.providers.base import GeneratedImage, Generation
from service.quotas import Quotas
from service.routing import Router
from service.store.base import ImageStore
from service.store.signing import UrlSigner

log = structlog.get_logger("aigne.hub")

JSON = "application/json"
CONTRACT_DEFAULT_MODEL = "dall-e-2"
LOCAL_MODEL = "local"


class ImageServicer(pb_grpc.ImageServiceServicer):
    def __init__(self, *, registry: ModelRegistry, router: Router, listing: ModelListing,
                 store: ImageStore, signer: UrlSigner, loader: ImageLoader, quotas: Quotas,
                 default_model: str | None, fan_out_concurrency: int) -> None:
        self._registry = registry
        self._router = router
        self._listing = listing
        self._quotas = quotas
        self._store = store
        self._signer = signer
        self._loader = loader
        self._default_model = default_model
        self._concurrency = fan_out_concurrency
        self._warned: set[tuple[str, str]] = set()

    async def Generate(self, request: pb.GenerateRequest, context: object) -> pb.GenerateResponse:
        call = current_call()
        plan, pin = await self._checked(request, call)
        job = replace(plan.job, images=await self._loader.load(plan.image_sources),
                      deadline=call.deadline, request_id=call.request_id)
        call.meter.generation = generation = await fan_out(
            lambda part: self._router.generate(part, call.meter.attempts, pin), job,
            concurrency=self._concurrency, seconds_left=call.remaining())
        images = await conform(generation.images, plan)
        data = await self._answer(images, plan)
        call.meter.returned(images)
        self._lifecycle_headers(call, plan.route)
        return pb.GenerateResponse(
            created=int(call.accepted_at), data=data,
            usage=_usage(generation), output_format=plan.output_format,
            background=plan.job.background if plan.job.background != "auto" else None)

    async def _checked(self, request: pb.GenerateRequest,
                       call: Call) -> tuple[validation.GenerationPlan, str | None]:
        """The request checked against its model and the caller's key, and its images
        reserved in the key's quotas. `NAME/MODEL` pins the deployment (or kind) NAME."""
        meter = call.meter  # usage: the interceptor records it, success or failure
        meter.requested(request, request.model or self._default_model
                        or await default_model(self._registry, self._router))
        pin, model = self._pinned(meter.model)
        call.caller.check_model(model)
        route = self._registry.route(model)
        plan = validation.plan(request, route)
        await self._router.targets(route.served, pin)  # 503/404 now if nothing can serve it
        call.log.update(model=route.requested.name, served=route.served.name, n=plan.job.n)
        meter.planned(plan)
        meter.reservation = await self._quotas.reserve(call.caller, plan.job.n)
        return plan, pin

    def _pinned(self, name: str) -> tuple[str | None, str]:
        if name in self._registry or "/" not in name:
            return None, name
        pin, _, model = name.partition("/")
        return pin, model

    async def GenerateHttp(self, request: pb.GenerateHttpRequest,
                           context: object) -> httpbody_pb2.HttpBody:
        generate_request = json_codec.decode(request.body.data, pb.GenerateRequest)
        response = await self.Generate(generate_request, context)
        return httpbody_pb2.HttpBody(content_type=JSON, data=json_codec.encode(response))

    async def GetImage(self, request: pb.GetImageRequest, context: object) -> httpbody_pb2.HttpBody:
        self._signer.verify(request.name, request.expires, request.signature)
        data, content_type = await self._store.get(request.name)
        current_call().log.update(bytes=len(data))
        return httpbody_pb2.HttpBody(content_type=content_type, data=data)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: object) -> pb.ListModelsResponse:
        return await self._listing.answer()

    async def _answer(self, images: list[GeneratedImage],
                      plan: validation.GenerationPlan) -> list[pb.Image]:
        if plan.response_format == "b64_json":
            return [pb.Image(b64_json=i.data, revised_prompt=i.revised_prompt) for i in images]
        names = await asyncio.gather(*(self._store.put(i.data, i.mime_type) for i in images))
        return [pb.Image(url=self._signer.url(name), revised_prompt=image.revised_prompt)
                for name, image in zip(names, images, strict=True)]

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


async def default_model(registry: ModelRegistry, router: Router) -> str:
    """The contract's default, dall-e-2, when something can serve it; else the local
    renderer, so a fresh machine with no provider key answers with a real image."""
    if await router.is_configured(registry.route(CONTRACT_DEFAULT_MODEL).served.provider):
        return CONTRACT_DEFAULT_MODEL
    return LOCAL_MODEL


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


def _epoch(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _http_date(day: date) -> str:
    return format_datetime(datetime(day.year, day.month, day.day, tzinfo=UTC), usegmt=True)
