"""OpenAI's image models, or any OpenAI-compatible upstream (OPENAI_BASE_URL), spoken over
the images API's own wire format: `POST /images/generations` (JSON) and `POST
/images/edits` (multipart: one file as `image`, several as `image[]`), answers and errors
(`{"error": {"message", "type", "param", "code"}}`) as JSON.

The client is aiohttp (one connection pool, made at start-up) with orjson, not the `openai`
SDK: measured here, one `images.generate` through the SDK and its pure-Python HTTP stack
cost ~1.7 ms of CPU, against ~0.2 ms over aiohttp; a 10-image `b64_json` answer (~33 MB of
JSON) is parsed several times faster, and its base64 strings are let go one by one as the
images are decoded. README "Performance" has the figures.

Nothing retries here: the service retries retryable failures once, in one place
(service.generation). Every failure is mapped to a HubError in this module.
"""

from __future__ import annotations

import asyncio
import binascii
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from service.config import Settings
from service.errors import (
    ContentPolicyViolation,
    DeadlineExceeded,
    HubError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    UpstreamFailed,
    redact,
)
from service.imaging import verified_mime_type
from service.providers.base import GeneratedImage, Generation, ImageJob, TokenUsage

DEFAULT_BASE_URL = "https://api.openai.com/v1"
CONTENT_REFUSALS = {"moderation_blocked", "content_policy_violation"}
REQUEST_FIELDS = {"prompt", "model", "image", "n", "size", "quality", "style", "output_format",
                  "output_compression", "background", "moderation", "user"}
B64_KEY, SPACE, BACKSLASH, COLON, QUOTE = b'"b64_json"', b" \t\r\n", 0x5C, 0x3A, 0x22
INLINE_CHECK_BYTES = 64 << 10  # smaller images are checked on the loop (a thread hop costs more)
JSON_HEADERS = {"content-type": "application/json"}


class OpenAIProvider:
    name = "openai"

    def __init__(self, api_key: str, base_url: str) -> None:
        self._base = base_url.rstrip("/")
        self._auth = {"authorization": f"Bearer {api_key}", "accept": "application/json"}
        self._session: aiohttp.ClientSession | None = None  # made on first use, on the loop

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIProvider | None:
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
        if not key:
            return None
        return cls(key, settings.openai_base_url or DEFAULT_BASE_URL)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=200, keepalive_timeout=30),
                skip_auto_headers=("user-agent",))
        return self._session

    async def generate(self, job: ImageJob) -> Generation:
        started = time.perf_counter()
        headers = {**self._auth, "x-request-id": job.request_id} if job.request_id \
            else dict(self._auth)
        timeout = aiohttp.ClientTimeout(total=job.seconds_left())
        try:
            body: aiohttp.FormData | bytes
            if job.images:
                path, body = "/images/edits", edit_form(job)
            else:
                path, body = "/images/generations", orjson.dumps(generate_args(job))
                headers.update(JSON_HEADERS)
            async with self._http().post(self._base + path, data=body, headers=headers,
                                         timeout=timeout) as response:
                status, answer_headers = response.status, response.headers
                raw = await _body(response)
            payload = _json(raw, status)
            del raw  # what is left of it (the base64 of the images) goes as they are decoded
            if status >= 400:
                raise hub_error(status, payload, answer_headers, job)
            images = await self._images(payload, job)
        except TimeoutError:
            raise DeadlineExceeded(f"{job.model.upstream} did not answer within the request's "
                                   "time budget.") from None
        except aiohttp.ClientError:
            raise UpstreamFailed("The image provider could not be reached.",
                                 reason="UPSTREAM_UNREACHABLE") from None
        return Generation(images=images, usage=token_usage(payload.get("usage")),
                          upstream_seconds=time.perf_counter() - started)

    async def _images(self, payload: dict[str, Any], job: ImageJob) -> list[GeneratedImage]:
        items = payload.get("data")
        if not isinstance(items, list) or len(items) != job.n \
                or not all(isinstance(item, dict) for item in items):
            count = len(items) if isinstance(items, list) else 0
            raise UpstreamFailed(f"{job.model.upstream} answered {count} image(s) of {job.n}.")
        files = []
        for item in items:  # each base64 string is let go as soon as it is decoded
            encoded = item.pop("b64_json", None)
            files.append(_decode(encoded) if encoded else await self._fetch(item.get("url")))
            del encoded
        if all(len(f) < INLINE_CHECK_BYTES for f in files):
            mime_types = [verified_mime_type(f) for f in files]
        else:
            mime_types = await asyncio.gather(*(_check(f) for f in files))
        if None in mime_types:
            raise UpstreamFailed(f"{job.model.upstream} answered an image that is broken or "
                                 "not PNG, JPEG or WebP.")
        return [GeneratedImage(data=f, mime_type=m or "",
                               revised_prompt=_text(item.get("revised_prompt")))
                for f, m, item in zip(files, mime_types, items, strict=True)]

    async def _fetch(self, url: object) -> bytes:
        if not isinstance(url, str) or not url:
            raise UpstreamFailed("OpenAI answered an image with neither b64_json nor url.")
        try:
            async with self._http().get(url) as answer:  # our key is not sent there
                answer.raise_for_status()
                return await answer.read()
        except aiohttp.ClientError as exc:
            raise UpstreamFailed(f"Could not fetch the image OpenAI made: {exc}") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def generate_args(job: ImageJob) -> dict[str, Any]:
    """The `/images/generations` body for `job`: only what the model takes."""
    args = _common_args(job)
    if job.moderation:
        args["moderation"] = job.moderation
    if job.style:
        args["style"] = job.style
    return args


def edit_form(job: ImageJob) -> aiohttp.FormData:
    """The `/images/edits` multipart form: fields as text, the source images as files (one as
    `image`, several as `image[]`, the only forms OpenAI takes)."""
    form = aiohttp.FormData()
    for name, value in _common_args(job).items():
        form.add_field(name, str(value).lower() if isinstance(value, bool) else str(value))
    field = "image" if len(job.images) == 1 else "image[]"
    for i, image in enumerate(job.images):
        form.add_field(field, image.data, content_type=image.mime_type,
                       filename=f"image{i}.{image.mime_type.split('/')[-1]}")
    return form


def _common_args(job: ImageJob) -> dict[str, Any]:
    spec = job.model
    args: dict[str, Any] = {"model": spec.upstream, "prompt": job.prompt, "n": job.n,
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


def token_usage(usage: object) -> TokenUsage | None:
    if not isinstance(usage, dict):
        return None
    inputs, outputs = usage.get("input_tokens_details"), usage.get("output_tokens_details")
    if not isinstance(inputs, dict):
        inputs = {"text_tokens": usage.get("input_tokens", 0), "image_tokens": 0}
    if not isinstance(outputs, dict):
        outputs = {"text_tokens": 0, "image_tokens": usage.get("output_tokens", 0)}
    return TokenUsage(input_text=_int(inputs.get("text_tokens")),
                      input_image=_int(inputs.get("image_tokens")),
                      output_text=_int(outputs.get("text_tokens")),
                      output_image=_int(outputs.get("image_tokens")))


def hub_error(status: int, payload: dict[str, Any], headers: Mapping[str, str],
              job: ImageJob) -> HubError:
    """What the caller should hear about an OpenAI error answer. Never the key, never our
    config."""
    model = job.model.upstream
    error = payload.get("error")
    error = error if isinstance(error, dict) else {}
    code, param = _text(error.get("code")), _text(error.get("param"))
    message = redact(_text(error.get("message")) or f"HTTP {status}")
    if code in CONTENT_REFUSALS:
        return ContentPolicyViolation(f"The provider's safety system refused this request: "
                                      f"{message}", param="prompt")
    if status == 429:
        return ResourceExhausted(f"The image provider is rate limiting this gateway: {message}",
                                 reason="UPSTREAM_RATE_LIMITED", retry_after=retry_after(headers))
    if status in (401, 403):
        return Unavailable("The image provider refused this gateway's credentials; an operator "
                           "must check OPENAI_API_KEY.", reason="UPSTREAM_AUTH_FAILED")
    if code == "model_not_found" or status == 404:
        return UpstreamFailed(f"The upstream does not serve '{model}' ({message}). An operator "
                              "can let this server serve it through its successor.",
                              reason="UPSTREAM_MODEL_NOT_FOUND", retryable=False)
    if 400 <= status < 500:
        return InvalidArgument(f"The image provider refused the request: {message}",
                               param=param if param in REQUEST_FIELDS else None,
                               reason="UPSTREAM_INVALID_REQUEST")
    return UpstreamFailed(f"The image provider failed ({status}): {message}")


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds), if the upstream sent them."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


async def _body(response: aiohttp.ClientResponse) -> bytes | bytearray:
    """The answer's body, read into one buffer of the announced length (reading it whole
    would hold its chunks and their join at once: twice tens of megabytes)."""
    length = response.content_length
    if not length or response.headers.get("content-encoding", "identity") != "identity":
        return await response.read()
    body = bytearray(length)
    filled = 0
    with memoryview(body) as view:
        async for chunk in response.content.iter_any():
            if filled + len(chunk) > length:
                raise aiohttp.ClientPayloadError("the answer is longer than it said")
            view[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
    if filled != length:
        raise aiohttp.ClientPayloadError("the answer is shorter than it said")
    return body


def _json(raw: bytes | bytearray, status: int) -> dict[str, Any]:
    """The answer's JSON object. An error answer that is not JSON (a proxy's HTML page) is
    still an error of its status; a success that is not JSON is a bad answer."""
    payload: Any = _json_around_images(raw) if status < 400 else None
    if payload is None:
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            payload = None
    if isinstance(payload, dict):
        return payload
    if status >= 400:
        return {"error": {"message": raw[:300].decode("utf-8", "replace")}}
    raise UpstreamFailed("The image provider answered something that is not the JSON of its "
                         "API.", reason="UPSTREAM_BAD_RESPONSE")


def _json_around_images(raw: bytes | bytearray) -> dict[str, Any] | None:
    """The answer's JSON parsed around its images: each `"b64_json": "..."` value is left
    in `raw` and given as a view of it, so that tens of megabytes of base64 are neither
    copied into strings nor checked as UTF-8. None when the answer is not of that plain
    shape (an escape near a b64_json, a count that does not add up): it is parsed whole."""
    view, pieces, spans, pos = memoryview(raw), [], [], 0
    try:
        while (key := raw.find(B64_KEY, pos)) >= 0:
            if key and raw[key - 1] == BACKSLASH:
                return None
            i = _skip_space(raw, key + len(B64_KEY))
            if raw[i] != COLON:
                return None
            i = _skip_space(raw, i + 1)
            if raw[i] != QUOTE:
                return None
            end = raw.find(b'"', i + 1)
            if end < 0 or raw.find(b"\\", i + 1, end) >= 0:
                return None
            pieces.append(view[pos:i + 1])
            spans.append(view[i + 1:end])
            pos = end
        if not spans:
            return None
        pieces.append(view[pos:])
        payload = orjson.loads(b"".join(pieces))
    except (IndexError, orjson.JSONDecodeError):
        return None
    items = payload.get("data") if isinstance(payload, dict) else None
    holders = [item for item in items or () if isinstance(item, dict)
               and item.get("b64_json") == ""] if isinstance(items, list) else []
    if len(holders) != len(spans):
        return None
    for item, span in zip(holders, spans, strict=True):
        item["b64_json"] = span
    return payload


def _skip_space(raw: bytes | bytearray, i: int) -> int:
    while raw[i] in SPACE:
        i += 1
    return i


def _decode(encoded: object) -> bytes:
    try:
        return binascii.a2b_base64(encoded)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise UpstreamFailed("The image provider answered an image that is not base64.",
                             reason="UPSTREAM_BAD_RESPONSE") from None


async def _check(data: bytes) -> str | None:
    if len(data) < INLINE_CHECK_BYTES:
        return verified_mime_type(data)
    return await asyncio.to_thread(verified_mime_type, data)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
