"""The Gemini provider's generateContent: the `google-genai` SDK's request, built once per model
and image config, sent on a bare aiohttp session (wire.py).

A call through the SDK cost ~1.5 ms of CPU (docs/performance.md): most of it converting the
same typed config to the API's JSON again on every call, the rest its retrying transport and
the validation of the answer into pydantic models (the image's base64 included). Here the SDK
converts a call's parameters once per model and config, with a placeholder prompt and image
whose place in the JSON is checked, and each call puts its own prompt and images there; its
URL and headers (the API key's, the SDK's own) are the SDK's, built once too. The answer is
the API's JSON, read by the caller; an answer that is not 200 becomes the SDK's own error
(`errors.APIError` and its subclasses), as the SDK would raise it.

Only for clients that hold an API key (the Gemini API, Vertex AI express mode): the SDK
refreshes the token of application default credentials per call, so such clients keep the
SDK's transport (asked for the raw answer: the caller reads the same JSON either way). Should
an SDK release write the body another way, the placeholder check fails once, says so in the
log, and the SDK's transport is used from then on.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
import structlog
from google import genai
from google.genai import _common, types
from google.genai import errors as genai_errors
from google.genai import models as genai_models

from service.providers.wire import Answer, BareSession

log = structlog.get_logger("aigne.hub")

PROMPT_MARK = "\x00the prompt"
IMAGE_MARK = b"\x00the image"


@dataclass(frozen=True)
class Prepared:
    url: str
    headers: dict[str, str]
    body: dict[str, Any]  # all but the contents


class GeminiWire:
    def __init__(self, client: genai.Client, session: BareSession) -> None:
        self._client = client
        self._session = session
        self._prepared: dict[Any, Prepared] = {}
        self._bare = bool(client._api_client.api_key)

    async def generate_content(self, model: str, key: Any,
                               config: Callable[[], types.GenerateContentConfig],
                               prompt: str, images: Sequence[tuple[bytes, str]], *,
                               seconds: float | None, request_id: str) -> dict[str, Any]:
        """The API's JSON answer to `prompt` and `images` (bytes, MIME type) for `model` with
        the config `config` makes (made once per `key`), or the SDK's error for it."""
        prepared = self._prepared_for(model, key, config) if self._bare else None
        if prepared is None:
            return await self._through_the_sdk(model, config(), prompt, images, seconds,
                                               request_id)
        headers = dict(prepared.headers)
        if seconds is not None:  # as the SDK says a call's deadline
            headers["X-Server-Timeout"] = str(math.ceil(seconds))
        if request_id:
            headers["x-request-id"] = request_id
        body = {"contents": [_contents(prompt, images)], **prepared.body}
        answer = await self._session.post(prepared.url, orjson.dumps(body), headers,
                                          seconds=seconds)
        if answer.status != 200:
            await genai_errors.APIError.raise_error_async(answer.status, _error_json(answer),
                                                          None)
        return _json_object(answer.body)

    def _prepared_for(self, model: str, key: Any,
                      config: Callable[[], types.GenerateContentConfig]) -> Prepared | None:
        prepared = self._prepared.get(key)
        if prepared is None:
            try:
                prepared = self._prepared[key] = _prepare(self._client, model, config())
            except _BodyChanged as changed:
                log.warning("gemini_wire_off", reason=str(changed))
                self._bare = False
        return prepared

    async def _through_the_sdk(self, model: str, config: types.GenerateContentConfig,
                               prompt: str, images: Sequence[tuple[bytes, str]],
                               seconds: float | None, request_id: str) -> dict[str, Any]:
        parts: list[Any] = [prompt]
        parts += [types.Part.from_bytes(data=data, mime_type=mime_type)
                  for data, mime_type in images]
        config = config.model_copy(update={
            "should_return_http_response": True,
            "http_options": types.HttpOptions(
                timeout=int(seconds * 1000) if seconds is not None else None,
                headers={"x-request-id": request_id} if request_id else None)})
        response = await self._client.aio.models.generate_content(
            model=model, contents=parts, config=config)
        raw = response.sdk_http_response.body if response.sdk_http_response else None
        return _json_object(raw or b"{}")


class _BodyChanged(Exception):
    pass


def _prepare(client: genai.Client, model: str, config: types.GenerateContentConfig) -> Prepared:
    """The SDK's own request for `model` and `config`, with placeholders for the contents
    (the steps of its `models._generate_content`)."""
    api = client._api_client
    contents: Any = [
        PROMPT_MARK, types.Part.from_bytes(data=IMAGE_MARK, mime_type="image/png")]
    params = types._GenerateContentParameters(model=model, config=config, contents=contents)
    convert = (genai_models._GenerateContentParameters_to_vertex if api.vertexai
               else genai_models._GenerateContentParameters_to_mldev)
    request = convert(api, params, None, params)
    path = "{model}:generateContent".format_map(request.get("_url") or {})
    if request.get("_query"):
        path = f"{path}?{urlencode(request['_query'])}"
    request.pop("config", None)
    request = _common.encode_unserializable_types(_common.convert_to_dict(request))
    http = api._build_request("post", path, request, None)
    if not isinstance(http.data, dict):
        raise _BodyChanged("the SDK's body is not a JSON object")
    body = dict(http.data)
    written = body.pop("contents", None)
    expected = [_contents(PROMPT_MARK, [(IMAGE_MARK, "image/png")])]
    if written != expected:
        raise _BodyChanged(f"the SDK's contents are {written!r}, not {expected!r}")
    return Prepared(http.url, dict(http.headers), body)


def _contents(prompt: str, images: Sequence[tuple[bytes, str]]) -> dict[str, Any]:
    """One user turn: the prompt, then each image inline, as the SDK writes them (URL-safe
    base64, `mime_type`: the API reads either spelling of a field)."""
    parts: list[dict[str, Any]] = [{"text": prompt}]
    parts += [{"inlineData": {"data": base64.urlsafe_b64encode(data).decode("ascii"),
                              "mime_type": mime_type}} for data, mime_type in images]
    return {"role": "user", "parts": parts}


def _error_json(answer: Answer) -> Any:
    """An error answer's JSON, or its text (as the SDK reads one)."""
    try:
        return orjson.loads(answer.body)
    except ValueError:
        return {"message": answer.body.decode(errors="replace"), "status": answer.reason}


def _json_object(body: bytes | bytearray | str) -> dict[str, Any]:
    """The answer's JSON object; ValueError for anything else (garbage, a list)."""
    answer = orjson.loads(body) if not isinstance(body, str) else json.loads(body)
    if not isinstance(answer, dict):
        raise ValueError("not a JSON object")
    return answer

