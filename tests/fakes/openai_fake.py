"""A fake OpenAI images API that answers as today's API does.

`POST /v1/images/generations` (JSON) and `POST /v1/images/edits` (multipart, `image` or
`image[]`): gpt-image models answer base64 only, with `usage`; a request carrying
`response_format` or `style` to a gpt-image model is a 400 `unknown_parameter`; retired names
(dall-e-2, dall-e-3, gpt-image-1) are 404 `model_not_found`; sizes follow gpt-image-2's rules.
With `stream: true` the answer is Server-Sent Events as OpenAI sends them: per image,
`partial_images` `image_generation.partial_image` events (`image_edit.*` for edits), then
`image_generation.completed` with the image and the usage, `stream_event_delay` apart.
"""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Any

from tests.fakes.images import picture
from tests.fakes.server import FakeServer, Received, Reply

RETIRED = {"dall-e-2", "dall-e-3", "gpt-image-1"}
QUALITY_FACTOR = {"low": 16, "medium": 48, "high": 96, "auto": 48}


def error(status: int, message: str, *, code: str | None = None, param: str | None = None,
          kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"error": {"message": message, "type": kind, "param": param,
                                    "code": code}}, headers=headers or {})


def image_tokens(width: int, height: int, quality: str) -> int:
    """gpt-image-2's output tokens for one image, as the public calculator counts them."""
    f = QUALITY_FACTOR.get(quality, 48)
    long_edge, short_edge = max(width, height), min(width, height)
    s = (2 * f * short_edge + long_edge) // (2 * long_edge)
    return math.ceil(f * s * (2_000_000 + width * height) / 4_000_000)


class FakeOpenAI(FakeServer):
    api_key = "sk-test-fake-openai-key-1234567890"

    def __init__(self, *, retired: set[str] = RETIRED, noise: bool = False,
                 api_key: str | None = None, stream_event_delay: float = 0.15) -> None:
        super().__init__()
        if api_key is not None:
            self.api_key = api_key
        self.retired = retired  # names this upstream no longer serves
        self.noise = noise  # answer with large noise images, as real models do
        self.stream_event_delay = stream_event_delay

    def success(self, *, size: str = "1024x1024", n: int = 1, noise: bool = False,
                delay: float = 0.0) -> Reply:
        """A successful answer, as the API gives it, to script (e.g. a slow one)."""
        reply = self._images({"size": size, "n": n}, 0, noise=noise)
        reply.delay = delay
        return reply

    def route(self, method: str, path: str) -> str | None:
        return {"/v1/images/generations": "generations",
                "/v1/images/edits": "edits"}.get(path.split("?")[0])

    def authorized(self, request: Received) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    def answer(self, route: str, request: Received) -> Reply:
        if not self.authorized(request):
            return error(401, "Incorrect API key provided: sk-***.", code="invalid_api_key")
        params = request.json if route == "generations" else {
            k: v[0] for k, v in request.fields.items()}
        if route == "edits" and not request.files:
            return error(400, "image is required", param="image")
        problem = self._problem(params or {})
        if problem:
            return problem
        answer = self._images(params or {}, sum(len(files) for files in request.files.values()))
        if str((params or {}).get("stream", "")).lower() == "true":
            return self._stream(answer.json, int((params or {}).get("partial_images", 0)),
                                "image_edit" if route == "edits" else "image_generation")
        return answer

    def _stream(self, answer: dict[str, Any], partial_images: int, kind: str) -> Reply:
        """`answer` told as OpenAI streams it: previews, then each image with the usage."""
        facts = {"created_at": answer["created"], "size": answer["size"],
                 "quality": answer["quality"], "background": answer["background"],
                 "output_format": answer["output_format"]}
        w, h = (int(x) for x in answer["size"].split("x"))
        fmt = {"jpeg": "JPEG", "webp": "WEBP"}.get(answer["output_format"], "PNG")
        events = []
        for index, item in enumerate(answer["data"]):
            for preview in range(partial_images):
                data = base64.b64encode(picture(w, h, 100 + 10 * index + preview, fmt)).decode()
                events.append({"type": f"{kind}.partial_image", "b64_json": data,
                               "partial_image_index": preview, **facts})
            events.append({"type": f"{kind}.completed", "b64_json": item["b64_json"], **facts,
                           "usage": answer["usage"]})
        return Reply(200, events=[f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode()
                                  for e in events], event_delay=self.stream_event_delay)

    def _problem(self, params: dict[str, Any]) -> Reply | None:
        model = params.get("model", "dall-e-2")
        if model in self.retired:
            return error(404, f"The model `{model}` has been deprecated. Learn more: "
                              "https://platform.openai.com/docs/deprecations",
                         code="model_not_found")
        for name in ("response_format", "style"):
            if name in params and model.startswith("gpt-image"):
                return error(400, f"Unknown parameter: '{name}'.", param=name,
                             code="unknown_parameter")
        size = params.get("size", "auto")
        if size != "auto":
            w, h = (int(x) for x in size.split("x"))
            if w % 16 or h % 16 or max(w, h) / min(w, h) > 3 or not 655_360 <= w * h <= 8_294_400:
                return error(400, f"Invalid size '{size}'.", param="size", code="invalid_value")
        return None

    def _images(self, params: dict[str, Any], input_images: int,
                noise: bool | None = None) -> Reply:
        size = params.get("size", "auto")
        w, h = (1024, 1024) if size == "auto" else (int(x) for x in size.split("x"))
        n, quality = int(params.get("n", 1)), params.get("quality", "auto")
        fmt = {"jpeg": "JPEG", "webp": "WEBP"}.get(params.get("output_format", "png"), "PNG")
        noise = self.noise if noise is None else noise
        data = [{"b64_json": base64.b64encode(picture(w, h, i, fmt, noise)).decode()}
                for i in range(n)]
        out_tokens = image_tokens(w, h, quality) * n
        text_tokens, image_in = len(str(params.get("prompt", ""))) // 4 + 1, 1120 * input_images
        return Reply(200, {
            "created": int(time.time()), "data": data,
            "background": "opaque", "output_format": params.get("output_format", "png"),
            "size": f"{w}x{h}", "quality": quality if quality != "auto" else "medium",
            "usage": {"total_tokens": text_tokens + image_in + out_tokens,
                      "input_tokens": text_tokens + image_in, "output_tokens": out_tokens,
                      "input_tokens_details": {"text_tokens": text_tokens,
                                               "image_tokens": image_in},
                      "output_tokens_details": {"text_tokens": 0, "image_tokens": out_tokens}}})


class FakeAzureOpenAI(FakeOpenAI):
    """Azure OpenAI's images API: `/openai/deployments/{deployment}/images/generations` (and
    `/edits`) with `?api-version=`, the key in an `api-key` header."""

    api_key = "azure-test-key-0123456789abcdef"

    def route(self, method: str, path: str) -> str | None:
        parts = path.split("?")[0].strip("/").split("/")
        if len(parts) == 5 and parts[:2] == ["openai", "deployments"] and parts[3] == "images":
            return {"generations": "generations", "edits": "edits"}.get(parts[4])
        return None

    def authorized(self, request: Received) -> bool:
        return request.headers.get("api-key") == self.api_key and "api-version=" in request.path
