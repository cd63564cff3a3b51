"""Google's image models through the `google-genai` SDK.

Two providers share this module (one SDK): `google`, the Gemini API, and `vertex`, Vertex AI
(an API key in express mode, or a project and location with application default
credentials). Gemini image models are called with `generate_content` and image output, one
image per call (the service fans out), the requested size mapped to the nearest aspect ratio
and size class the model has, and input images as inline parts for edits; the SDK's request
is sent on a bare aiohttp session (google_wire.py) and its answer read as the API's JSON.
Imagen models
(`api = "generate_images"` in the registry) are called with `generate_images`, which the SDK
serves in Vertex mode only.

A safety block is not an exception in this SDK: it is an answer without an image. Both that
and every SDK error are mapped to a HubError here.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from service.catalog.deployments import Deployment
from service.catalog.pricing import TokenUsage
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
from service.providers.base import GeneratedImage, Generation, ImageJob, ProviderDeps
from service.providers.google_wire import (
    GeminiWire,
    count_at,
    decoded_base64,
    dict_at,
    list_at,
)
from service.providers.imaging import checked_image
from service.providers.wire import UPSTREAM_CONNECTIONS

SAFETY_FINISH = {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY",
                 "IMAGE_PROHIBITED_CONTENT", "RECITATION", "IMAGE_RECITATION"}
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


# One attempt: the service retries, in one place (service/routing/router.py). The SDK's
# default is one attempt too, but on aiohttp, when that is installed, it retries a broken
# connection itself.
NO_SDK_RETRIES = types.HttpRetryOptions(attempts=1)


class GoogleProvider:
    def __init__(self, name: str, client: genai.Client, secrets: KnownSecrets | None = None,
                 max_answer_bytes: int = ProviderDeps.max_answer_bytes) -> None:
        self.name = name
        self._client = client
        self._secrets = secrets or KnownSecrets()
        self._wire = GeminiWire(client, connections=UPSTREAM_CONNECTIONS,
                                max_body=max_answer_bytes)

    @classmethod
    def build(cls, deployment: Deployment, secret: str, deps: ProviderDeps) -> GoogleProvider:
        """A client of `deployment`: the Gemini API with `secret`, or Vertex AI in express
        mode with `secret`, or with the deployment's project and location and application
        default credentials when there is no secret."""
        options = types.HttpOptions(base_url=deployment.base_url or None,
                                    retry_options=NO_SDK_RETRIES)
        if deployment.kind == "gemini":
            client = genai.Client(api_key=secret, http_options=options)
        elif secret:  # Vertex express mode: the key alone, no project
            client = genai.Client(vertexai=True, api_key=secret, http_options=options)
        else:
            client = genai.Client(vertexai=True, project=deployment.options.get("project"),
                                  location=deployment.options.get("location", "global"),
                                  http_options=options)
        return cls(deployment.label, client, deps.secrets, deps.max_answer_bytes)

    async def generate(self, job: ImageJob) -> Generation:
        started = time.perf_counter()
        try:
            if job.model.api == "generate_images":
                images, usage = await self._imagen(job), None
            else:
                images, usage = await self._gemini(job)
        except genai_errors.APIError as exc:
            raise hub_error(exc, job, self.name, self._secrets) from None
        # The SDK's async calls go over aiohttp when it is installed (it is: the openai SDK's
        # transport), else over httpx: either's errors mean the same here.
        except (httpx2.TimeoutException, TimeoutError):
            raise DeadlineExceeded(f"{job.model.upstream} did not answer within the request's "
                                   "time budget.") from None
        except (httpx2.HTTPError, aiohttp.ClientError):
            raise UpstreamFailed("The image provider could not be reached.",
                                 reason="UPSTREAM_UNREACHABLE") from None
        except ValueError:  # garbage instead of the API's JSON
            raise UpstreamFailed("The image provider answered something that is not the JSON "
                                 "of its API.", reason="UPSTREAM_BAD_RESPONSE") from None
        return Generation(images=images, usage=usage,
                          upstream_seconds=time.perf_counter() - started)

    async def _gemini(self, job: ImageJob) -> tuple[list[GeneratedImage], TokenUsage | None]:
        if job.n != 1:
            raise RuntimeError("Gemini image models make one image per call; fan out first")
        aspect_ratio = job.model.nearest_aspect_ratio(job.size) if job.size else None
        image_size = job.model.image_size_class(job.size)

        def config() -> types.GenerateContentConfig:
            return types.GenerateContentConfig(
                response_modalities=["TEXT", "IMAGE"],
                image_config=types.ImageConfig(aspect_ratio=aspect_ratio, image_size=image_size),
                **job.model.upstream_params)

        answer = await self._wire.generate_content(
            job.model.upstream, (job.model.upstream, aspect_ratio, image_size,
                                 repr(sorted(job.model.upstream_params.items()))),
            config, job.prompt, [(i.data, i.mime_type) for i in job.images],
            seconds=job.seconds_left, request_id=job.request_id)
        return [await _gemini_image(answer, job)], _gemini_usage(answer.get("usageMetadata"))

    async def _imagen(self, job: ImageJob) -> list[GeneratedImage]:
        response = await self._client.aio.models.generate_images(
            model=job.model.upstream, prompt=job.prompt,
            config=types.GenerateImagesConfig(
                number_of_images=job.n, include_rai_reason=True,
                aspect_ratio=job.model.nearest_aspect_ratio(job.size) if job.size else None,
                image_size=job.model.image_size_class(job.size),
                output_mime_type=MIME_TYPES[job.output_format],
                output_compression_quality=job.output_compression,
                http_options=_http_options(job), **job.model.upstream_params))
        made = [g for g in response.generated_images or [] if g.image and g.image.image_bytes]
        if len(made) < job.n:
            reasons = {g.rai_filtered_reason for g in response.generated_images or []
                       if g.rai_filtered_reason}
            if reasons:
                raise ContentPolicyViolation("The provider's safety filter removed images: "
                                             + "; ".join(sorted(reasons)), param="prompt")
            raise UpstreamFailed(f"{job.model.upstream} answered {len(made)} image(s) of {job.n}.")
        return [await checked_image(g.image.image_bytes, job) for g in made]  # type: ignore[union-attr, arg-type]

    async def aclose(self) -> None:
        await self._wire.aclose()
        await self._client.aio.aclose()


def _http_options(job: ImageJob) -> types.HttpOptions:
    """Per call: the request's deadline as timeout, and its request id. They name no retry
    options, so the client's NO_SDK_RETRIES hold (the SDK merges per-call options over the
    client's)."""
    seconds = job.seconds_left()
    return types.HttpOptions(
        timeout=int(seconds * 1000) if seconds is not None else None,
        headers={"x-request-id": job.request_id} if job.request_id else None)


async def _gemini_image(answer: dict[str, Any], job: ImageJob) -> GeneratedImage:
    """The image of a generateContent answer (the API's JSON), or why there is none."""
    block = dict_at(answer, "promptFeedback").get("blockReason")
    if block:
        raise ContentPolicyViolation(f"The provider blocked the prompt ({block}).",
                                     param="prompt")
    candidates = list_at(answer, "candidates")
    if not candidates or not isinstance(candidates[0], dict):
        raise UpstreamFailed(f"{job.model.upstream} answered no candidate.")
    candidate = candidates[0]
    parts = [p for p in list_at(dict_at(candidate, "content"), "parts") if isinstance(p, dict)]
    for part in parts:
        data = dict_at(part, "inlineData").get("data")
        if data and isinstance(data, str) and not part.get("thought"):
            return await checked_image(decoded_base64(data), job)
    finish = str(candidate.get("finishReason") or "").upper()
    if finish in SAFETY_FINISH:
        raise ContentPolicyViolation(f"The provider's safety system withheld the image ({finish}).",
                                     param="prompt")
    said = " ".join(str(p["text"]) for p in parts if p.get("text"))[:300]
    raise UpstreamFailed(f"{job.model.upstream} answered without an image ({finish or 'no reason'})"
                         + (f": {said}" if said else "."), reason="UPSTREAM_NO_IMAGE",
                         retryable=False)


def _gemini_usage(meta: Any) -> TokenUsage | None:
    """Tokens by kind, from the answer's usageMetadata."""
    if not isinstance(meta, dict):
        return None

    def count(key: str) -> int:
        return count_at(meta, key)

    def images(key: str) -> int:
        return sum(count_at(d, "tokenCount") for d in list_at(meta, key)
                   if isinstance(d, dict) and d.get("modality") == "IMAGE")

    prompt_images = images("promptTokensDetails")
    output_images = images("candidatesTokensDetails")
    return TokenUsage(
        input_text=count("promptTokenCount") - prompt_images,
        input_image=prompt_images,
        output_text=count("candidatesTokenCount") - output_images + count("thoughtsTokenCount"),
        output_image=output_images,
    )


def hub_error(exc: genai_errors.APIError, job: ImageJob, deployment: str,
              secrets: KnownSecrets | None = None) -> HubError:
    """What the caller should hear about a Google failure. Never a key (`secrets` are the
    credentials this server holds), never our config."""
    model = job.model.upstream
    message = redact(str(exc.message or exc.status or exc.code), secrets)
    body = exc.details if isinstance(exc.details, dict) else {}
    reasons = {d.get("reason") for d in list_at(dict_at(body, "error"), "details")
               if isinstance(d, dict)}
    if exc.code in (401, 403) or "API_KEY_INVALID" in reasons:
        return Unavailable(f"The image provider refused this gateway's credentials ({deployment}); "
                           "an operator must check them.",
                           reason="UPSTREAM_AUTH_FAILED")
    if exc.code == 429:
        return ResourceExhausted(f"The image provider is rate limiting this gateway: {message}",
                                 reason="UPSTREAM_RATE_LIMITED", retry_after=_retry_delay(body))
    if exc.code == 404:
        return UpstreamFailed(f"The upstream does not serve '{model}' ({message}). An operator "
                              "can let this server serve it through its successor.",
                              reason="UPSTREAM_MODEL_NOT_FOUND", retryable=False)
    if exc.code and 400 <= exc.code < 500:
        return InvalidArgument(f"The image provider refused the request: {message}",
                               reason="UPSTREAM_INVALID_REQUEST")
    return UpstreamFailed(f"The image provider failed ({exc.code} {exc.status}): {message}")


def _retry_delay(body: dict[str, Any]) -> float | None:
    """The google.rpc.RetryInfo delay (`"26s"`) of an error body, in seconds."""
    for detail in list_at(dict_at(body, "error"), "details"):
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            try:
                return float(str(detail.get("retryDelay", "")).rstrip("s"))
            except ValueError:
                return None
    return None
