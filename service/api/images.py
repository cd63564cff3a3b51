"""The ImageService servicer: short methods that call the parts in order.

    route the model → check the request → claim the idempotency key (or replay its answer)
    → reserve quota → load input images → fan out to the provider → as each call is done:
    conform its images, store them (url, or kept for replays and jobs) or embed them
    (b64_json), tell the stream → answer

Generate, StreamGenerate and the jobs of JobService (service/jobs/runner.py) all take this path.
It never imports an SDK and never builds an error body: it raises HubError.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, date, datetime
from email.utils import format_datetime

import structlog
from google.api import httpbody_pb2

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc as pb_grpc
from service.accounting.idempotency import (
    REPLAYED_HEADER,
    Claim,
    Idempotency,
    generation_fingerprint,
)
from service.accounting.quotas import Quotas
from service.api.listing import ModelListing
from service.catalog.models import Lifecycle, ModelRegistry, Route
from service.generation import answers, streaming, validation
from service.generation.answers import KeptAnswer
from service.generation.fan_out import conform, fan_out
from service.generation.inputs import ImageLoader
from service.generation.streaming import NO_EVENTS, GenerationEvents
from service.providers.base import GeneratedImage, Generation, ImageJob
from service.routing.router import Router
from service.rpc import json_codec, wire
from service.rpc.call import Call, current_call
from service.store.base import ImageStore
from service.store.signing import UrlSigner

log = structlog.get_logger("aigne.hub")

JSON = "application/json"
CONTRACT_DEFAULT_MODEL = "dall-e-2"
LOCAL_MODEL = "local"
STREAMING_CALL = "StreamGenerate (REST: POST /api/images/generations:stream)"


class ImageServicer(pb_grpc.ImageServiceServicer):
    def __init__(self, *, registry: ModelRegistry, router: Router, listing: ModelListing,
                 store: ImageStore, signer: UrlSigner, loader: ImageLoader, quotas: Quotas,
                 default_model: str | None, fan_out_concurrency: int, idempotency: Idempotency,
                 stream_heartbeat: float) -> None:
        self._idempotency = idempotency
        self._heartbeat = stream_heartbeat
        self._detached: set[asyncio.Task[pb.GenerateResponse]] = set()
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
        return await self.generate(current_call(), request, refuse_streams=STREAMING_CALL)

    async def GenerateHttp(self, request: pb.GenerateHttpRequest,  # type: ignore[override]
                           context: object) -> wire.Wire:
        """The REST door: the same answer as JSON, its image bytes base64-encoded once,
        straight into the HttpBody's wire bytes (service.rpc.wire)."""
        generate_request = json_codec.decode(request.body.data, pb.GenerateRequest)
        response = await self.Generate(generate_request, context)
        return wire.rest_answer(*wire.detach_images(response))

    async def StreamGenerate(self, request: pb.StreamGenerateRequest,
                             context: object) -> AsyncIterator[pb.StreamGenerateResponse]:
        async for event in self._stream(current_call(), request.request):
            yield event

    async def StreamGenerateHttp(self, request: pb.StreamGenerateHttpRequest,
                                 context: object) -> AsyncIterator[httpbody_pb2.HttpBody]:
        call = current_call()
        generate_request = json_codec.decode(request.body.data, pb.GenerateRequest)
        call.response_headers.append(("cache-control", "no-cache"))
        async for chunk in streaming.server_sent_events(
                self._stream(call, generate_request), edit=bool(generate_request.image),
                request_id=call.request_id, on_error=lambda error: setattr(call, "failure", error)):
            yield httpbody_pb2.HttpBody(content_type=streaming.EVENT_STREAM, data=chunk)

    def _stream(self, call: Call, request: pb.GenerateRequest
                ) -> AsyncIterator[pb.StreamGenerateResponse]:
        def sent(images: int, size: int) -> None:  # a failed stream is charged what it sent
            call.meter.images, call.meter.bytes = images, size

        return streaming.stream(lambda events: self.generate(call, request, events),
                                previews=max(request.partial_images, 0),
                                heartbeat=self._heartbeat, on_failure=sent)

    async def generate(self, call: Call, request: pb.GenerateRequest,
                       events: GenerationEvents = NO_EVENTS,
                       refuse_streams: str | None = None) -> pb.GenerateResponse:
        """One generation, for every door: planned, then replayed from an earlier attempt
        with the same idempotency key, or made. Made under a key, it goes on when the
        client goes away, so that a retry finds its answer."""
        plan, pin = await self.plan(call, request, refuse_streams)
        claim = await self._idempotency.claim(
            call.caller.id, call.idempotency_key, "generate", generation_fingerprint(request),
            call.request_id, call.remaining())
        if claim.answer is not None:
            return await self._replay(call, plan, KeptAnswer.from_json(claim.answer), events)
        work = self._reserve_and_make(call, plan, pin, claim, events)
        if not claim.held:
            return await work
        call.detached = task = asyncio.create_task(work)  # not cancelled with the call
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)
        return await asyncio.shield(task)

    async def plan(self, call: Call, request: pb.GenerateRequest,
                   refuse_streams: str | None = None
                   ) -> tuple[validation.GenerationPlan, str | None]:
        """The request checked against its model and the caller's key, and the deployment
        (or kind) it pins with `NAME/MODEL`. `refuse_streams` (for calls that answer once)
        names the streaming call that `stream` and previews need."""
        meter = call.meter  # usage: the interceptor records it, success or failure
        meter.requested(request, request.model or self._default_model
                        or await default_model(self._registry, self._router))
        if refuse_streams:
            validation.refuse_stream_fields(request, refuse_streams)
        pin, model = self._pinned(meter.model)
        call.caller.check_model(model)
        meter.route = route = self._registry.route(model)
        plan = validation.plan(request, route)
        await self._router.targets(route.served, pin)  # 503/404 now if nothing can serve it
        call.log.update(model=route.requested.name, served=route.served.name, n=plan.job.n)
        meter.planned(plan)
        self._lifecycle_headers(call, route)
        return plan, pin

    def _pinned(self, name: str) -> tuple[str | None, str]:
        if name in self._registry or "/" not in name:
            return None, name
        pin, _, model = name.partition("/")
        return pin, model

    async def _reserve_and_make(self, call: Call, plan: validation.GenerationPlan,
                                pin: str | None, claim: Claim,
                                events: GenerationEvents) -> pb.GenerateResponse:
        try:
            call.meter.reservation = await self._quotas.reserve(call.caller, plan.job.n)
            response, names, images = await self.make(call, plan, pin, events, keep=claim.held)
            await claim.complete(KeptAnswer.of(response, names, plan.response_format).to_json())
        except BaseException:
            await claim.release()
            raise
        call.meter.returned(images)
        return response

    async def make(self, call: Call, plan: validation.GenerationPlan, pin: str | None,
                   events: GenerationEvents, *, keep: bool
                   ) -> tuple[pb.GenerateResponse, list[str], list[GeneratedImage]]:
        """Make the images: the answer, the store names of its images (every image is
        stored when `keep`, else only `url` ones) and the images themselves."""
        n = plan.job.n
        data: list[pb.Image] = [pb.Image()] * n
        names, made = [""] * n, list[GeneratedImage | None]([None] * n)

        async def part_done(part: ImageJob, generation: Generation) -> None:
            images = await conform(generation.images, plan)
            stored = await self._store_all(images, plan.response_format == "url" or keep)
            for offset, (image, name) in enumerate(zip(images, stored, strict=True)):
                index = part.first_index + offset
                data[index], names[index], made[index] = self._image(image, name, plan), name, image
                await events.image(index, data[index], len(image.data))

        job = replace(plan.job, images=await self._loader.load(plan.image_sources),
                      deadline=call.deadline, request_id=call.request_id,
                      on_partial=self._previews(plan, events) if events.previews else None)
        await events.started(plan, int(call.accepted_at), "generating")
        call.meter.generation = generation = await fan_out(
            lambda part: self._router.generate(part, call.meter.attempts, pin), job,
            concurrency=self._concurrency, seconds_left=call.remaining(), on_part=part_done)
        response = pb.GenerateResponse(
            created=int(call.accepted_at), data=data, usage=_usage(generation),
            output_format=plan.output_format,
            background=plan.job.background if plan.job.background != "auto" else None)
        return response, names, [image for image in made if image is not None]

    def _previews(self, plan: validation.GenerationPlan, events: GenerationEvents
                  ) -> Callable[[int, int, GeneratedImage], Awaitable[None]]:
        async def preview(index: int, partial_index: int, image: GeneratedImage) -> None:
            [conformed] = await conform([image], plan)
            await events.partial(index, partial_index, conformed.data)

        return preview

    async def _replay(self, call: Call, plan: validation.GenerationPlan, kept: KeptAnswer,
                      events: GenerationEvents) -> pb.GenerateResponse:
        """The answer of an earlier attempt with the same idempotency key, told again; its
        usage was recorded by that attempt."""
        call.meter.record = False
        call.response_headers.append(REPLAYED_HEADER)
        response = await answers.told(kept, self._store, self._signer)
        await events.started(plan, kept.created, "replaying")
        for index, image in enumerate(response.data):
            await events.image(index, image, len(image.b64_json))
        return response

    async def drain(self, seconds: float) -> None:
        """Let generations that outlive their callers (idempotent ones) end, for at most
        `seconds`; then cancel them (their idempotency keys are given up)."""
        if not self._detached:
            return
        _, pending = await asyncio.wait(set(self._detached), timeout=seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def GetImage(self, request: pb.GetImageRequest, context: object) -> httpbody_pb2.HttpBody:
        self._signer.verify(request.name, request.expires, request.signature)
        data, content_type = await self._store.get(request.name)
        meter = current_call().meter  # not a usage record: for the metrics and the log line
        meter.response_format, meter.images, meter.bytes = "file", 1, len(data)
        return httpbody_pb2.HttpBody(content_type=content_type, data=data)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: object) -> pb.ListModelsResponse:
        return await self._listing.answer()

    async def _store_all(self, images: list[GeneratedImage], store: bool) -> list[str]:
        """The store names of `images` when `store`, else empty names."""
        if not store:
            return [""] * len(images)
        return list(await asyncio.gather(*(self._store.put(i.data, i.mime_type)
                                           for i in images)))

    def _image(self, image: GeneratedImage, name: str,
               plan: validation.GenerationPlan) -> pb.Image:
        if plan.response_format == "b64_json":
            return pb.Image(b64_json=image.data, revised_prompt=image.revised_prompt)
        return pb.Image(url=self._signer.url(name), revised_prompt=image.revised_prompt)

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
