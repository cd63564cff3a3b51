"""The OpenAI provider's JSON POST: the `openai` SDK's request, sent on a bare aiohttp session.

Most of a generation's CPU in the SDK (~0.5 ms a call, docs/performance.md) is spent
building the same request again on every call: options copied, headers merged and
validated, URLs parsed and merged, then httpx's request and response models around the
aiohttp transport. Here the SDK builds the request once per model (its URL, with Azure's
deployment path and api-version; its auth and default headers), and each call sends that
request with its own body and timeout on the client's bare aiohttp session (wire.py); an
answer that is an error is turned into the SDK's own error (`APIStatusError` and its subclasses,
`APITimeoutError`, `APIConnectionError`), exactly as its `post` would raise it.

This holds for clients whose headers do not change between calls: a static API key, which
is what every client `OpenAIProvider.build` makes (no Azure AD token provider). Redirects
are not followed: a 3xx is an error, as is any answer that is not 2xx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
import openai
import orjson
from openai import AsyncOpenAI
from openai._models import FinalRequestOptions

from service.providers.wire import BareSession

# Headers the SDK sets per attempt; ours are set per call, or not at all.
PER_CALL_HEADERS = {"content-length", "x-stainless-read-timeout", "x-stainless-retry-count"}


@dataclass(frozen=True)
class Prepared:
    url: str
    headers: dict[str, str]


class JsonPoster:
    def __init__(self, client: AsyncOpenAI, *, connections: int, max_body: int,
                 keepalive_seconds: float = 4.0) -> None:
        self._client = client
        self._prepared: dict[tuple[str, str], Prepared] = {}
        # The TLS context of the SDK's transport.
        self._session = BareSession(connections=connections, max_body=max_body,
                                    tls=httpx2.create_ssl_context(),
                                    keepalive_seconds=keepalive_seconds)

    async def post(self, path: str, body: dict[str, Any], *, seconds: float,
                   headers: dict[str, str]) -> bytearray:
        """The answer's body, or the SDK's error for it."""
        prepared = await self._prepare(path, str(body.get("model", "")))
        url = prepared.url
        try:
            answer = await self._session.post(url, orjson.dumps(body),
                                              {**prepared.headers, **headers}, seconds=seconds)
        except TimeoutError as exc:
            raise openai.APITimeoutError(request=_request(url)) from exc
        except aiohttp.ClientError as exc:
            raise openai.APIConnectionError(request=_request(url)) from exc
        if not 200 <= answer.status < 300:  # (redirects are not followed: the key stays)
            raise self._client._make_status_error_from_response(httpx2.Response(
                answer.status, content=bytes(answer.body), request=_request(url),
                # As received, but for what aiohttp undid: the body is decoded already.
                headers=[(name, value) for name, value in answer.raw_headers
                         if name.lower() not in (b"content-encoding", b"content-length")]))
        return answer.body

    async def aclose(self) -> None:
        await self._session.aclose()

    async def _prepare(self, path: str, model: str) -> Prepared:
        """The URL and headers of the SDK's POST to `path` for `model` (Azure puts the model's
        deployment in the path), built by the SDK once."""
        prepared = self._prepared.get((path, model))
        if prepared is None:
            options = await self._client._prepare_options(FinalRequestOptions.construct(
                method="post", url=path, json_data={"model": model}))
            request = self._client._build_request(options)
            prepared = Prepared(str(request.url), {
                name: value for name, value in request.headers.items()
                if name.lower() not in PER_CALL_HEADERS})
            self._prepared[(path, model)] = prepared
        return prepared


def _request(url: str) -> httpx2.Request:
    return httpx2.Request("POST", url)
