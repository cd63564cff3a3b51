"""The OpenAI provider's JSON POST: the `openai` SDK's request, sent on a bare aiohttp session.

Most of a generation's CPU in the SDK (~0.5 ms a call, docs/performance.md) is spent
building the same request again on every call: options copied, headers merged and
validated, URLs parsed and merged, then httpx's request and response models around the
aiohttp transport. Here the SDK builds the request once per model (its URL, with Azure's
deployment path and api-version; its auth and default headers), and each call sends that
request with its own body and timeout on an aiohttp session kept for the client; an answer
that is an error is turned into the SDK's own error (`APIStatusError` and its subclasses,
`APITimeoutError`, `APIConnectionError`), exactly as its `post` would raise it.

This holds for clients whose headers do not change between calls: a static API key, which
is what every client `OpenAIProvider.build` makes (no Azure AD token provider). Redirects
are not followed (the key would go with them): a 3xx is an error, as is any answer that is
not 2xx. The proxy is what HTTP(S)_PROXY and NO_PROXY name for the URL, looked up once, at
its first call (ALL_PROXY is not read; a change takes a restart).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
import openai
import orjson
from aiohttp.helpers import BasicAuth, get_env_proxy_for_url
from openai import AsyncOpenAI
from openai._models import FinalRequestOptions
from yarl import URL

from service.errors import UpstreamFailed

# Headers the SDK sets per attempt; ours are set per call, or not at all.
PER_CALL_HEADERS = {"content-length", "x-stainless-read-timeout", "x-stainless-retry-count"}


@dataclass(frozen=True)
class Prepared:
    url: str
    headers: dict[str, str]
    proxy: URL | None
    proxy_auth: BasicAuth | None


class JsonPoster:
    def __init__(self, client: AsyncOpenAI, *, connections: int, max_body: int,
                 keepalive_seconds: float = 4.0) -> None:
        self._client = client
        self._max_body = max_body
        self._connections = connections
        self._keepalive = keepalive_seconds
        self._prepared: dict[tuple[str, str], Prepared] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def post(self, path: str, body: dict[str, Any], *, seconds: float,
                   headers: dict[str, str]) -> bytearray:
        """The answer's body, or the SDK's error for it."""
        prepared = await self._prepare(path, str(body.get("model", "")))
        url = prepared.url
        try:
            async with self._open().post(
                    url, data=orjson.dumps(body), headers={**prepared.headers, **headers},
                    timeout=aiohttp.ClientTimeout(total=seconds), allow_redirects=False,
                    proxy=prepared.proxy, proxy_auth=prepared.proxy_auth) as response:
                content = await _body(response, self._max_body)
        except TimeoutError as exc:  # aiohttp's own timeouts are TimeoutErrors too
            raise openai.APITimeoutError(request=_request(url)) from exc
        except aiohttp.ClientError as exc:
            raise openai.APIConnectionError(request=_request(url)) from exc
        if not 200 <= response.status < 300:  # (redirects are not followed: the key stays)
            raise self._client._make_status_error_from_response(httpx2.Response(
                response.status, content=bytes(content), request=_request(url),
                # As received, but for what aiohttp undid: the body is decoded already.
                headers=[(name, value) for name, value in response.raw_headers
                         if name.lower() not in (b"content-encoding", b"content-length")]))
        return content

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _prepare(self, path: str, model: str) -> Prepared:
        """The URL and headers of the SDK's POST to `path` for `model` (Azure puts the model's
        deployment in the path), built by the SDK once; and the proxy the environment names
        for that URL (HTTPS_PROXY, NO_PROXY: as the SDK's transport), looked up once."""
        prepared = self._prepared.get((path, model))
        if prepared is None:
            options = await self._client._prepare_options(FinalRequestOptions.construct(
                method="post", url=path, json_data={"model": model}))
            request = self._client._build_request(options)
            url = str(request.url)
            try:  # may read ~/.netrc: off the loop
                proxy, proxy_auth = await asyncio.to_thread(get_env_proxy_for_url, URL(url))
            except LookupError:
                proxy, proxy_auth = None, None
            prepared = Prepared(url, {name: value for name, value in request.headers.items()
                                      if name.lower() not in PER_CALL_HEADERS},
                                proxy, proxy_auth)
            self._prepared[(path, model)] = prepared
        return prepared

    def _open(self) -> aiohttp.ClientSession:
        """The session, made on first use (inside the running loop, after tracing set up
        aiohttp's instrumentation)."""
        if self._closed:  # the provider was replaced (its deployment changed): go elsewhere
            raise aiohttp.ClientConnectionError("this deployment's client is closed")
        if self._session is None or self._session.closed:
            # The SDK's TLS context. The proxy is looked up once per URL (_prepare), not per
            # call: aiohttp's trust_env costs two thread hops a request.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections,
                                               keepalive_timeout=self._keepalive,
                                               ssl=httpx2.create_ssl_context()))
        return self._session


async def _body(response: aiohttp.ClientResponse, most: int) -> bytearray:
    """The whole body, of at most `most` bytes (UpstreamFailed beyond, refused at once when
    its Content-Length says so). Gathered in one buffer that grows as chunks arrive: read()
    keeps every chunk and then joins them, twice the body at its peak (a 10-image answer is
    ~33 MB); nor is a buffer sized from the upstream's word before the bytes come."""
    length = response.content_length
    if length is not None and length > most and not response.headers.get("Content-Encoding"):
        raise _too_large(most)
    body = bytearray()
    async for chunk in response.content.iter_any():
        if len(body) + len(chunk) > most:
            raise _too_large(most)
        body += chunk
    return body


def _too_large(most: int) -> UpstreamFailed:
    return UpstreamFailed(f"The image provider's answer is larger than this server takes "
                          f"({most >> 20} MB).", reason="UPSTREAM_ANSWER_TOO_LARGE",
                          retryable=False)


def _request(url: str) -> httpx2.Request:
    return httpx2.Request("POST", url)

