"""OpenAI's image models through the `openai` SDK: OpenAI itself or any OpenAI-compatible
base URL (AsyncOpenAI), and Azure OpenAI (AsyncAzureOpenAI: endpoint, API version, and a
deployment name per model from the deployment's `model_map`).

Generations are the SDK's `/images/generations` request, built by the SDK once and sent on a
bare aiohttp session (openai_wire.py); streamed ones go to `images.generate`; a job with
source images goes to `images.edit` (multipart: one file as `image`, several as `image[]`,
and the `mask`); the raw answer is read by openai_answer.py beside this module. The SDK's
own retries are off: the service retries in one place, the router
(service/routing/router.py), which moves on to the next deployment and goes round again.
Every SDK error is mapped to a HubError here (`hub_error`; `generate` maps the few that are
not APIErrors), and nothing outside these modules sees the SDK.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import aiohttp
import httpx2
import openai
from openai import AsyncAzureOpenAI, AsyncOpenAI

from service.catalog.deployments import Deployment
from service.errors import (
    ContentPolicyViolation,
    DeadlineExceeded,
    HubError,
    InvalidArgument,
    KnownSecrets,
    ResourceExhausted,
    Unavailable,
    UpstreamFailed,
    redact,
)
from service.net.fetch import FetchFailed
from service.providers.base import GeneratedImage, Generation, ImageJob, ProviderDeps
from service.providers.imaging import checked_image
from service.providers.openai_answer import _decode, _json, token_usage, url_answer_error
from service.providers.openai_wire import JsonPoster
from service.providers.wire import UPSTREAM_CONNECTIONS

DEFAULT_BASE_URL = "https://api.openai.com/v1"
UPSTREAM_KEEPALIVE = 256
CONTENT_REFUSALS = {"moderation_blocked", "content_policy_violation"}
REQUEST_FIELDS = {"prompt", "model", "image", "n", "size", "quality", "style", "output_format",
                  "output_compression", "background", "moderation", "user"}


class OpenAIProvider:
    def __init__(self, name: str, client: AsyncOpenAI, deps: ProviderDeps,
                 model_map: dict[str, str] | None = None) -> None:
        self.name = name  # the deployment's
        self._client = client
        self._fetcher = deps.fetcher  # `url` answers: the source images' guard and limits
        self._secrets = deps.secrets
        self._model_map = model_map or {}
        self._poster = JsonPoster(client, connections=UPSTREAM_CONNECTIONS,
                                  max_body=deps.max_answer_bytes)

    @classmethod
    def build(cls, deployment: Deployment, secret: str, deps: ProviderDeps) -> OpenAIProvider:
        """A client of `deployment` (kind `openai` or `azure`) holding `secret`."""
        # One client per deployment and credential, on the SDK's aiohttp transport (its
        # cheapest: docs/performance.md), its pool sized for thousands of waiting requests.
        http = openai.DefaultAioHttpClient(
            limits=httpx2.Limits(max_connections=UPSTREAM_CONNECTIONS,
                                 max_keepalive_connections=UPSTREAM_KEEPALIVE))
        client: AsyncOpenAI
        if deployment.kind == "azure":
            client = AsyncAzureOpenAI(azure_endpoint=deployment.base_url or "",
                                      api_version=deployment.api_version, api_key=secret,
                                      max_retries=0, http_client=http)
        else:
            client = AsyncOpenAI(api_key=secret, base_url=deployment.base_url or DEFAULT_BASE_URL,
                                 max_retries=0, http_client=http)
        return cls(deployment.label, client, deps, deployment.model_map)

    async def generate(self, job: ImageJob) -> Generation:
        started = time.perf_counter()
        options: dict[str, Any] = {"timeout": job.seconds_left()}
        if job.request_id:
            options["extra_headers"] = {"x-request-id": job.request_id}
        try:
            model = self._model_map.get(job.model.upstream, job.model.upstream)
            if job.streams_previews:
                return await self._stream(job, model, options, started)
            # The raw answer, parsed here: the SDK's response models would copy every image's
            # base64 into pydantic strings (~1.5 ms of CPU a call, more for large images).
            if job.images:
                raw = await self._client.images.with_raw_response.edit(
                    **edit_args(job, model), **options)
                content = raw.http_response.content
            else:
                # The SDK's request (its auth, Azure's paths, its errors), prepared once and
                # sent on a bare aiohttp session: openai_wire.py.
                content = await self._poster.post(
                    "/images/generations", generate_args(job, model),
                    seconds=options["timeout"], headers=options.get("extra_headers", {}))
            body = _json(content)
            made = await self._images(body, job)
        except openai.APIError as exc:
            raise hub_error(exc, job, self.name, self._secrets) from None
        except FetchFailed as failed:  # a `url` answer the guard refused or could not fetch
            raise url_answer_error(failed) from None
        except ValueError:  # the SDK met a body that is not the JSON it expects
            raise UpstreamFailed("The image provider answered something that is not the JSON "
                                 "of its API.", reason="UPSTREAM_BAD_RESPONSE") from None
        return Generation(images=made, usage=token_usage(body.get("usage")),
                          upstream_seconds=time.perf_counter() - started)

    async def _stream(self, job: ImageJob, model: str, options: dict[str, Any],
                      started: float) -> Generation:
        """One image streamed (`stream`, `partial_images`): each preview goes to
        job.on_partial as it arrives; the `.completed` event holds the image and usage.
        Errors are mapped by the caller, like those of a plain call."""
        assert job.on_partial is not None and job.n == 1
        args = edit_args(job, model) if job.images else generate_args(job, model)
        call = self._client.images.edit if job.images else self._client.images.generate
        stream = await call(**args, stream=True, partial_images=job.partial_images,  # type: ignore[operator]
                            **options)
        completed = None
        async with stream:
            async for event in stream:
                if event.type.endswith(".partial_image") and event.b64_json:
                    preview = await checked_image(base64.b64decode(event.b64_json), job)
                    await job.on_partial(job.first_index, event.partial_image_index or 0,
                                         preview)
                elif event.type.endswith(".completed"):
                    completed = event
        if completed is None or not completed.b64_json:
            raise UpstreamFailed(f"{job.model.upstream}'s stream ended without its image.",
                                 reason="UPSTREAM_NO_IMAGE")
        image = await checked_image(base64.b64decode(completed.b64_json), job)
        return Generation(images=[image], usage=token_usage(completed.usage),
                          upstream_seconds=time.perf_counter() - started)

    async def _images(self, body: dict[str, Any], job: ImageJob) -> list[GeneratedImage]:
        """The images of an answer's JSON (`data[].b64_json`, or `url` from older models),
        each decoded and checked to be a whole image."""
        items = body.get("data") or []
        if len(items) != job.n:
            raise UpstreamFailed(f"{job.model.upstream} answered {len(items)} image(s) of {job.n}.")
        files = []
        for item in items:  # each image's base64 is let go as soon as it is decoded
            encoded = item.pop("b64_json", None)
            files.append(_decode(encoded) if encoded else await self._fetch(item.get("url")))
            del encoded
        return list(await asyncio.gather(*(
            checked_image(f, job, item.get("revised_prompt"))
            for f, item in zip(files, items, strict=True))))

    async def _fetch(self, url: str | None) -> bytes:
        """An image answered as a URL: fetched through the guard, as source images are (an
        upstream must not make this server reach loopback or private addresses)."""
        if not isinstance(url, str) or not url:
            raise UpstreamFailed("OpenAI answered an image with neither b64_json nor url.")
        return await self._fetcher.fetch(url)

    async def aclose(self) -> None:
        await self._poster.aclose()
        await self._client.close()


def generate_args(job: ImageJob, model: str) -> dict[str, Any]:
    """The `images.generate` arguments for `job`: only what the model takes."""
    args = _common_args(job, model)
    if job.moderation:
        args["moderation"] = job.moderation
    if job.style:
        args["style"] = job.style
    return args


def edit_args(job: ImageJob, model: str) -> dict[str, Any]:
    """The `images.edit` arguments: files as (name, bytes, type), the only form OpenAI takes."""
    files = [(f"image{i}.{image.mime_type.split('/')[-1]}", image.data, image.mime_type)
             for i, image in enumerate(job.images)]
    args = {**_common_args(job, model), "image": files[0] if len(files) == 1 else files}
    if job.mask is not None:
        args["mask"] = ("mask.png", job.mask.data, job.mask.mime_type)
    if job.input_fidelity:
        args["input_fidelity"] = job.input_fidelity
    return args


def _common_args(job: ImageJob, model: str) -> dict[str, Any]:
    spec = job.model
    args: dict[str, Any] = {"model": model, "prompt": job.prompt, "n": job.n,
                            "size": str(job.size) if job.size else "auto",
                            "quality": job.quality}
    if len(spec.output_formats) > 1:
        args["output_format"] = job.output_format
    if job.output_compression is not None:
        args["output_compression"] = job.output_compression
    if job.background:
        args["background"] = job.background
    if job.user:
        args["user"] = job.user
    return {**args, **spec.upstream_params}


def _dropped(exc: BaseException) -> bool:
    """Whether a "timeout" was in fact a connection the upstream dropped or refused: the
    SDK's aiohttp transport reports every aiohttp connection error as httpx's ConnectTimeout
    (its exception map), so the aiohttp error behind it decides."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(
                cause, TimeoutError):
            return True
        cause = cause.__cause__
    return False


def hub_error(exc: openai.APIError, job: ImageJob, deployment: str,
              secrets: KnownSecrets | None = None) -> HubError:
    """What the caller should hear about an OpenAI failure. Never a key (`secrets` are the
    credentials this server holds), never our config."""
    model = job.model.upstream
    if isinstance(exc, openai.APITimeoutError) and not _dropped(exc):
        return DeadlineExceeded(f"{model} did not answer within the request's time budget.")
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamFailed("The image provider could not be reached.",
                              reason="UPSTREAM_UNREACHABLE")
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamFailed("The image provider could not be reached.",
                              reason="UPSTREAM_UNREACHABLE")
    status = getattr(exc, "status_code", None)
    message = redact(_upstream_message(exc), secrets)
    if exc.code in CONTENT_REFUSALS:
        return ContentPolicyViolation(f"The provider's safety system refused this request: "
                                      f"{message}", param="prompt")
    if status == 429:
        return ResourceExhausted(f"The image provider is rate limiting this gateway: {message}",
                                 reason="UPSTREAM_RATE_LIMITED",
                                 retry_after=retry_after(exc.response.headers))  # type: ignore[attr-defined]
    if status in (401, 403):
        return Unavailable(f"The image provider refused this gateway's credentials ({deployment}); "
                           "an operator must check them.",
                           reason="UPSTREAM_AUTH_FAILED")
    if exc.code == "model_not_found" or status == 404:
        return UpstreamFailed(f"The upstream does not serve '{model}' ({message}). An operator "
                              "can let this server serve it through its successor.",
                              reason="UPSTREAM_MODEL_NOT_FOUND", retryable=False)
    if status is not None and 400 <= status < 500:
        param = exc.param if exc.param in REQUEST_FIELDS else None
        return InvalidArgument(f"The image provider refused the request: {message}",
                               param=param, reason="UPSTREAM_INVALID_REQUEST")
    return UpstreamFailed(f"The image provider failed ({status or exc.code}): {message}")


def _upstream_message(exc: openai.APIError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return exc.message


def retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds), if the upstream sent them."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None
