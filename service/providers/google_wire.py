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

A thinking model may answer in rounds (`finishReason: CONTINUATION` with a continuation
token): the rounds are followed, as the SDK's `generate_content` follows them, and merged into
one answer (parts in order, token counts summed).

Only for clients that hold an API key (the Gemini API, Vertex AI express mode): the SDK
refreshes the token of application default credentials per call, so such clients keep the
SDK's transport (asked for the raw answer: the caller reads the same JSON either way). Should
an SDK release write the body another way, the placeholder check fails once, says so in the
log, and the SDK's transport is used from then on.
"""

from __future__ import annotations

import base64
import binascii
import math
import ssl
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
TOKEN_MARK = b"\x00the token"
MAX_ROUNDS = 16  # continuation rounds of one call; the request's deadline bounds them too


@dataclass(frozen=True)
class Prepared:
    url: str
    headers: dict[str, str]
    body: dict[str, Any]  # all but the contents


class GeminiWire:
    def __init__(self, client: genai.Client, *, connections: int, max_body: int) -> None:
        self._client = client
        self._prepared: dict[Any, Prepared] = {}
        api = client._api_client
        tls = getattr(api, "_async_client_session_request_args", {}).get("ssl")
        # Not for tokens the SDK refreshes, nor for its client certificates (mTLS).
        self._bare = bool(api.api_key and isinstance(tls, ssl.SSLContext)
                          and not api._aiohttp_use_mtls_endpoint
                          and not api._use_google_auth_async())
        self._session = BareSession(connections=connections, max_body=max_body,
                                    tls=tls if isinstance(tls, ssl.SSLContext)
                                    else ssl.create_default_context())

    async def generate_content(self, model: str, key: Any,
                               config: Callable[[], types.GenerateContentConfig],
                               prompt: str, images: Sequence[tuple[bytes, str]], *,
                               seconds: Callable[[], float | None], request_id: str
                               ) -> dict[str, Any]:
        """The API's JSON answer to `prompt` and `images` (bytes, MIME type) for `model` with
        the config `config` makes (made once per `key`), its continuation rounds merged in;
        or the SDK's error. `seconds` tells the time left."""
        call = _Call(model, key, config, prompt, images, request_id)
        rounds = [await self._round(call, seconds(), None)]
        while (token := _continuation(rounds[-1])) and len(rounds) < MAX_ROUNDS:
            rounds.append(await self._round(call, seconds(), token))
        return rounds[0] if len(rounds) == 1 else _merged(rounds)

    async def aclose(self) -> None:
        await self._session.aclose()

    async def _round(self, call: _Call, seconds: float | None, token: str | None
                     ) -> dict[str, Any]:
        prepared = self._prepared_for(call) if self._bare else None
        if prepared is None:
            return await self._through_the_sdk(call, seconds, token)
        headers = dict(prepared.headers)
        if seconds is not None:  # as the SDK says a call's deadline
            headers["X-Server-Timeout"] = str(math.ceil(seconds))
        if call.request_id:
            headers["x-request-id"] = call.request_id
        body = {"contents": [_contents(call.prompt, call.images)], **prepared.body}
        if token:
            body["continuationToken"] = token
        answer = await self._session.post(prepared.url, orjson.dumps(body), headers,
                                          seconds=seconds)
        if answer.status != 200:
            await genai_errors.APIError.raise_error_async(answer.status, _error_json(answer),
                                                          None)
        return _json_object(answer.body)

    def _prepared_for(self, call: _Call) -> Prepared | None:
        prepared = self._prepared.get(call.key)
        if prepared is None:
            try:
                prepared = self._prepared[call.key] = _prepare(self._client, call.model,
                                                               call.config())
            except _BodyChanged as changed:
                log.warning("gemini_wire_off", reason=str(changed))
                self._bare = False
        return prepared

    async def _through_the_sdk(self, call: _Call, seconds: float | None, token: str | None
                               ) -> dict[str, Any]:
        parts: list[Any] = [call.prompt]
        parts += [types.Part.from_bytes(data=data, mime_type=mime_type)
                  for data, mime_type in call.images]
        config = call.config().model_copy(update={
            "should_return_http_response": True,  # one round: the rounds are ours
            "continuation_token": decoded_base64(token) if token else None,
            "http_options": types.HttpOptions(
                timeout=int(seconds * 1000) if seconds is not None else None,
                headers={"x-request-id": call.request_id} if call.request_id else None)})
        response = await self._client.aio.models.generate_content(
            model=call.model, contents=parts, config=config)
        raw = response.sdk_http_response.body if response.sdk_http_response else None
        return _json_object(raw or b"{}")


@dataclass(frozen=True)
class _Call:
    model: str
    key: Any
    config: Callable[[], types.GenerateContentConfig]
    prompt: str
    images: Sequence[tuple[bytes, str]]
    request_id: str


class _BodyChanged(Exception):
    pass


def _prepare(client: genai.Client, model: str, config: types.GenerateContentConfig) -> Prepared:
    """The SDK's own request for `model` and `config`, with placeholders for the contents
    (the steps of its `models._generate_content`), and its continuation checked."""
    request = _converted(client, model, config)
    path = "{model}:generateContent".format_map(request.get("_url") or {})
    if request.get("_query"):
        path = f"{path}?{urlencode(request['_query'])}"
    http = client._api_client._build_request("post", path, dict(request), None)
    if not isinstance(http.data, dict):
        raise _BodyChanged("the SDK's body is not a JSON object")
    body = dict(http.data)
    written = body.pop("contents", None)
    expected = [_contents(PROMPT_MARK, [(IMAGE_MARK, "image/png")])]
    if written != expected:
        raise _BodyChanged(f"the SDK's contents are {written!r}, not {expected!r}")
    continued = _converted(client, model, config.model_copy(
        update={"continuation_token": TOKEN_MARK}))
    token = base64.urlsafe_b64encode(TOKEN_MARK).decode("ascii")
    if continued != {**request, "continuationToken": token}:
        raise _BodyChanged(f"the SDK's continuation is not a continuationToken: {continued!r}")
    return Prepared(http.url, dict(http.headers), body)


def _converted(client: genai.Client, model: str, config: types.GenerateContentConfig
               ) -> dict[str, Any]:
    """The request the SDK writes for `model` and `config`, with the placeholder contents
    (and its `_url` and `_query`)."""
    api = client._api_client
    contents: Any = [
        PROMPT_MARK, types.Part.from_bytes(data=IMAGE_MARK, mime_type="image/png")]
    params = types._GenerateContentParameters(model=model, config=config, contents=contents)
    convert = (genai_models._GenerateContentParameters_to_vertex if api.vertexai
               else genai_models._GenerateContentParameters_to_mldev)
    request = convert(api, params, None, params)
    request.pop("config", None)
    converted: dict[str, Any] = _common.encode_unserializable_types(
        _common.convert_to_dict(request))
    return converted


def _contents(prompt: str, images: Sequence[tuple[bytes, str]]) -> dict[str, Any]:
    """One user turn: the prompt, then each image inline, as the SDK writes them (URL-safe
    base64, `mime_type`: the API reads either spelling of a field)."""
    parts: list[dict[str, Any]] = [{"text": prompt}]
    parts += [{"inlineData": {"data": base64.urlsafe_b64encode(data).decode("ascii"),
                              "mime_type": mime_type}} for data, mime_type in images]
    return {"role": "user", "parts": parts}


def _continuation(answer: dict[str, Any]) -> str | None:
    """The token of an answer that asks to be continued (as the SDK decides it)."""
    candidates = list_at(answer, "candidates")
    first = candidates[0] if candidates and isinstance(candidates[0], dict) else {}
    token = first.get("continuationToken")
    if isinstance(token, str) and token and first.get("finishReason") in (None, "CONTINUATION"):
        return token
    return None


def _merged(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Continuation rounds as one answer: the last round's, with every round's parts in
    order, the first prompt feedback, and the token counts summed."""
    candidates = [first if isinstance(first := (list_at(r, "candidates") or [{}])[0], dict)
                  else {} for r in rounds]
    last = candidates[-1]
    parts = [p for c in candidates for p in list_at(dict_at(c, "content"), "parts")]
    merged = {**rounds[-1], "usageMetadata": _summed([dict_at(r, "usageMetadata")
                                                      for r in rounds]),
              "candidates": [{**last, "content": {**dict_at(last, "content"), "parts": parts}}]}
    feedback = [dict_at(r, "promptFeedback") for r in rounds if dict_at(r, "promptFeedback")]
    if feedback:
        merged["promptFeedback"] = feedback[0]
    return merged


def _summed(usages: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for usage in usages:
        for name in usage:
            if name.endswith("Details"):
                by = {d.get("modality"): d for d in total.get(name, [])}
                for detail in (d for d in list_at(usage, name) if isinstance(d, dict)):
                    kept = by.setdefault(detail.get("modality"),
                                         {"modality": detail.get("modality"), "tokenCount": 0})
                    kept["tokenCount"] += count_at(detail, "tokenCount")
                total[name] = list(by.values())
            elif name.endswith("Count"):
                total[name] = total.get(name, 0) + count_at(usage, name)
    return total


def dict_at(value: dict[str, Any], key: str) -> dict[str, Any]:
    found = value.get(key)
    return found if isinstance(found, dict) else {}


def list_at(value: dict[str, Any], key: str) -> list[Any]:
    found = value.get(key)
    return found if isinstance(found, list) else []


def count_at(value: dict[str, Any], key: str) -> int:
    """A token count (an integer, or a number or numeral standing for one; else 0)."""
    found = value.get(key)
    if isinstance(found, bool):
        return 0
    if isinstance(found, int | float):
        return int(found)
    return int(found) if isinstance(found, str) and found.isdigit() else 0


def decoded_base64(data: str) -> bytes:
    """Base64, standard or URL-safe, padded or not (ValueError when it is neither)."""
    try:
        return base64.b64decode(data.translate(URL_SAFE) + "=" * (-len(data) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64") from exc


URL_SAFE = str.maketrans("-_", "+/")


def _error_json(answer: Answer) -> Any:
    """An error answer's JSON, or its text (as the SDK reads one)."""
    try:
        return orjson.loads(answer.body)
    except ValueError:
        return {"message": answer.body.decode(errors="replace"), "status": answer.reason}


def _json_object(body: bytes | bytearray | str) -> dict[str, Any]:
    """The answer's JSON object; ValueError for anything else (garbage, a list)."""
    answer = orjson.loads(body)
    if not isinstance(answer, dict):
        raise ValueError("not a JSON object")
    return answer

