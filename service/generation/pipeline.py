"""The generation pipeline: one object that Generate, StreamGenerate and jobs all call.

    plan (route the model, check the request against it and the caller's key)
    → claim the idempotency key (or replay its answer) → reserve quota (the Charge)
    → load input images (and a mask) → fan out to the provider → as each call is done: conform its
    images, store them (url, or kept for replays and jobs) or embed them (b64_json), tell
    the events → answer

It works in plain values (service/generation/request.py): it never imports gRPC, the
generated stubs or an SDK, and never builds an error body: it raises HubError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace

import structlog
from opentelemetry import trace

from service.accounting.idempotency import REPLAYED_HEADER, Claim, Idempotency
from service.catalog.models import ModelRegistry
from service.config import Settings
from service.generation import answers, validation
from service.generation.answers import KeptAnswer
from service.generation.context import RequestContext
from service.generation.events import NO_EVENTS, GenerationEvents
from service.generation.fan_out import conform, fan_out
from service.generation.inputs import ImageLoader
from service.generation.lifecycle import Lifecycles
from service.generation.request import Answer, AnswerImage, ImageRequest
from service.generation.validation import GenerationPlan
from service.providers.base import GeneratedImage, Generation, ImageJob, InputImage
from service.routing.router import Router
from service.store.base import ImageStore
from service.store.signing import UrlSigner

log = structlog.get_logger("aigne.hub")
_tracer = trace.get_tracer("aigne.hub")  # the no-op API's until ops/tracing sets the SDK up

CONTRACT_DEFAULT_MODEL = "dall-e-2"
LOCAL_MODEL = "local"


class Pipeline:
    def __init__(self, *, registry: ModelRegistry, router: Router, store: ImageStore,
                 signer: UrlSigner, loader: ImageLoader, idempotency: Idempotency,
                 default_model: str | None, fan_out_concurrency: int) -> None:
        self._registry = registry
        self._router = router
        self._store = store
        self._signer = signer
        self._loader = loader
        self._idempotency = idempotency
        self._default_model = default_model
        self._concurrency = fan_out_concurrency
        self._lifecycles = Lifecycles()
        self._detached: set[asyncio.Task[Answer]] = set()

    async def generate(self, context: RequestContext, request: ImageRequest,
                       events: GenerationEvents = NO_EVENTS,
                       refuse_streams: str | None = None) -> Answer:
        """One generation, for every door: planned, then replayed from an earlier attempt
        with the same idempotency key, or made. Made under a key, it goes on when the
        client goes away, so that a retry finds its answer."""
        plan, pin = await self.plan(context, request, refuse_streams)
        claim = await self._idempotency.claim(
            context.caller.id, context.idempotency_key, "generate", plan.identity,
            context.request_id, context.remaining())
        if claim.answer is not None:
            return await self._replay(context, plan, KeptAnswer.from_json(claim.answer), events)
        work = self._reserve_and_make(context, plan, pin, claim, events)
        if not claim.held:
            return await work
        context.detached = task = asyncio.create_task(work)  # not cancelled with the call
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)
        return await asyncio.shield(task)

    async def plan(self, context: RequestContext, request: ImageRequest,
                   refuse_streams: str | None = None) -> tuple[GenerationPlan, str | None]:
        """The request checked against its model and the caller's key, and the deployment
        (or kind) it pins with `NAME/MODEL`. `refuse_streams` (for calls that answer once)
        names the streaming call that `stream` and previews need."""
        charge = context.charge  # the call's end settles it, success or failure
        charge.asked(request.model or self._default_model
                     or await default_model(self._registry, self._router),
                     n=request.n, size=request.size, quality=request.quality,
                     response_format=request.response_format, user=request.user,
                     prompt=request.prompt)
        if refuse_streams:
            validation.refuse_stream_fields(request, refuse_streams)
        pin, model = self._pinned(charge.model)
        context.caller.check_model(model)
        route = self._registry.route(model)
        charge.route = route
        plan = validation.plan(request, route)
        await self._router.targets(route.served, pin)  # 503/404 now if nothing can serve it
        context.log.update(model=route.requested.name, served=route.served.name, n=plan.job.n)
        charge.planned(route, n=plan.job.n, size=plan.size,
                       response_format=plan.response_format, served_quality=plan.job.quality,
                       served_size=plan.job.size)
        context.response_headers.extend(self._lifecycles.headers(route, context.key))
        return plan, pin

    def _pinned(self, name: str) -> tuple[str | None, str]:
        if name in self._registry or "/" not in name:
            return None, name
        pin, _, model = name.partition("/")
        return pin, model

    async def _reserve_and_make(self, context: RequestContext, plan: GenerationPlan,
                                pin: str | None, claim: Claim,
                                events: GenerationEvents) -> Answer:
        try:
            await context.charge.reserve(plan.job.n)
            answer, names, images = await self.make(context, plan, pin, events,
                                                    keep=claim.held)
            await claim.complete(KeptAnswer.of(answer, names, plan.response_format).to_json())
        except BaseException:
            await claim.release()
            raise
        context.charge.returned(images)
        return answer

    async def make(self, context: RequestContext, plan: GenerationPlan, pin: str | None,
                   events: GenerationEvents, *, keep: bool
                   ) -> tuple[Answer, list[str], list[GeneratedImage]]:
        """Make the images: the answer, the store names of its images (every image is
        stored when `keep`, else only `url` ones) and the images themselves."""
        n = plan.job.n
        data: list[AnswerImage] = [AnswerImage()] * n
        names, made = [""] * n, list[GeneratedImage | None]([None] * n)

        async def part_done(part: ImageJob, generation: Generation) -> None:
            images = await conform(generation.images, plan)
            stored = await self._store_all(images, plan.response_format == "url" or keep)
            for offset, (image, name) in enumerate(zip(images, stored, strict=True)):
                index = part.first_index + offset
                data[index], names[index], made[index] = self._image(image, name, plan), name, image
                await events.image(index, data[index], len(image.data))

        images, mask = await self._inputs(plan)
        job = replace(plan.job, images=images, mask=mask, deadline=context.deadline,
                      request_id=context.request_id,
                      on_partial=self._previews(plan, events) if events.previews else None)
        await events.started(plan, int(context.accepted_at), "generating")
        generation = await fan_out(
            lambda part: self._router.generate(part, context.charge.attempts, pin), job,
            concurrency=self._concurrency, seconds_left=context.remaining(), on_part=part_done)
        context.charge.generated(generation)
        answer = Answer(
            created=int(context.accepted_at), data=tuple(data), usage=generation.usage,
            output_format=plan.output_format,
            background=plan.job.background if plan.job.background != "auto" else None)
        return answer, names, [image for image in made if image is not None]

    async def _inputs(self, plan: GenerationPlan
                      ) -> tuple[tuple[InputImage, ...], InputImage | None]:
        """The edit's source images and its mask, loaded and checked."""
        images = await self._loader.load(plan.image_sources)
        if plan.mask_source is None:
            return images, None
        return images, await self._loader.load_mask(plan.mask_source, images[0])

    def _previews(self, plan: GenerationPlan, events: GenerationEvents
                  ) -> Callable[[int, int, GeneratedImage], Awaitable[None]]:
        async def preview(index: int, partial_index: int, image: GeneratedImage) -> None:
            [conformed] = await conform([image], plan)
            await events.partial(index, partial_index, conformed.data)

        return preview

    async def _replay(self, context: RequestContext, plan: GenerationPlan, kept: KeptAnswer,
                      events: GenerationEvents) -> Answer:
        """The answer of an earlier attempt with the same idempotency key, told again; its
        usage was recorded by that attempt."""
        context.charge.record = False
        context.response_headers.append(REPLAYED_HEADER)
        answer = await answers.told(kept, self._store, self._signer)
        await events.started(plan, kept.created, "replaying")
        for index, image in enumerate(answer.data):
            await events.image(index, image, len(image.b64_json or b""))
        return answer

    async def drain(self, seconds: float) -> None:
        """Let generations that outlive their callers (idempotent ones) end, for at most
        `seconds`; then cancel them (their idempotency keys are given up)."""
        if not self._detached:
            return
        _, pending = await asyncio.wait(set(self._detached), timeout=seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _store_all(self, images: list[GeneratedImage], store: bool) -> list[str]:
        """The store names of `images` when `store`, else empty names."""
        if not store:
            return [""] * len(images)
        with _tracer.start_as_current_span("image store", attributes={
                "aigne.hub.images": len(images),
                "aigne.hub.image_bytes": sum(len(i.data) for i in images)}):
            return list(await asyncio.gather(*(self._store.put(i.data, i.mime_type)
                                               for i in images)))

    def _image(self, image: GeneratedImage, name: str, plan: GenerationPlan) -> AnswerImage:
        if plan.response_format == "b64_json":
            return AnswerImage(b64_json=image.data, revised_prompt=image.revised_prompt)
        return AnswerImage(url=self._signer.url(name), revised_prompt=image.revised_prompt)


async def default_model(registry: ModelRegistry, router: Router) -> str:
    """The contract's default, dall-e-2, when something can serve it; else the local
    renderer, so a fresh machine with no provider key answers with a real image."""
    if await router.is_configured(registry.route(CONTRACT_DEFAULT_MODEL).served.provider):
        return CONTRACT_DEFAULT_MODEL
    return LOCAL_MODEL


async def choose_default_model(settings: Settings, registry: ModelRegistry,
                               router: Router) -> str:
    """The model of requests that name none, as things stand at start-up (it follows the
    deployments: see ImageServicer.default_model); warn when it is the local renderer."""
    if settings.default_model:
        registry.get(settings.default_model)
        return settings.default_model
    model = await default_model(registry, router)
    if model == LOCAL_MODEL:
        log.warning("no provider key is set: requests that name no model go to the local "
                    "renderer ('local'); set OPENAI_API_KEY to use dall-e-2 as the default")
    return model
