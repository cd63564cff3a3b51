"""A provider client's bare aiohttp session: the POST that the lean upstream calls share.

The SDKs are kept for what they know (their URLs and auth headers, built once per model, and
their error types), but their per-call machinery costs most of a generation's CPU
(docs/performance.md); the OpenAI and Gemini providers send the SDK's request on this
session instead (openai_wire.py, google_wire.py), with the SDK's TLS context. Redirects are
not followed (the key would go with them: a base URL that redirects must be given as where
it leads). The proxy is what HTTP(S)_PROXY and NO_PROXY name for the URL, looked up
once, at its first call (ALL_PROXY is not read; a change takes a restart). An answer's body
is read whole, but never past the largest the server takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import aiohttp
from aiohttp.helpers import BasicAuth, get_env_proxy_for_url
from yarl import URL

from service.errors import UpstreamFailed

UPSTREAM_CONNECTIONS = 4096  # per deployment and credential: requests in flight upstream


class Answer:
    """An upstream's answer, read whole: its status, headers as received, and body."""

    __slots__ = ("body", "raw_headers", "reason", "status")

    def __init__(self, response: aiohttp.ClientResponse, body: bytearray) -> None:
        self.status = response.status
        self.reason = response.reason or ""
        self.raw_headers = response.raw_headers
        self.body = body


class BareSession:
    def __init__(self, *, connections: int, max_body: int, tls: ssl.SSLContext,
                 keepalive_seconds: float = 4.0) -> None:
        self.max_body = max_body
        self._tls = tls
        self._connections = connections
        self._keepalive = keepalive_seconds
        self._proxies: dict[str, tuple[URL | None, BasicAuth | None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def post(self, url: str, data: bytes, headers: dict[str, str], *,
                   seconds: float | None) -> Answer:
        """The whole answer, whatever its status. TimeoutError (aiohttp's own timeouts are
        TimeoutErrors too) or aiohttp.ClientError when none came; UpstreamFailed when it is
        larger than `max_body`."""
        proxy, proxy_auth = self._proxies.get(url) or await self._proxy(url)
        async with self._open().post(
                url, data=data, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=seconds),
                proxy=proxy, proxy_auth=proxy_auth) as response:
            return Answer(response, await _body(response, self.max_body))

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _proxy(self, url: str) -> tuple[URL | None, BasicAuth | None]:
        found: tuple[URL | None, BasicAuth | None] = None, None
        with contextlib.suppress(LookupError):  # may read ~/.netrc: off the loop
            found = await asyncio.to_thread(get_env_proxy_for_url, URL(url))
        self._proxies[url] = found
        return found

    def _open(self) -> aiohttp.ClientSession:
        """The session, made on first use (inside the running loop, after tracing set up
        aiohttp's instrumentation)."""
        if self._closed:  # the provider was replaced (its deployment changed): go elsewhere
            raise aiohttp.ClientConnectionError("this deployment's client is closed")
        if self._session is None or self._session.closed:
            # The proxy is looked up once per URL (_proxy), not per call: aiohttp's
            # trust_env costs two thread hops a request. The TLS context is the SDK's.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections,
                                               keepalive_timeout=self._keepalive,
                                               ssl=self._tls))
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
