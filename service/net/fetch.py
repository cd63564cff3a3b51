"""A GET through the guard (guard.py beside this module): each hop's host checked and
connected to at the checked address, redirects followed by hand and checked again, the
body capped in size and the whole fetch in time. Used for source images given as URLs and
for provider answers that carry a URL; callers turn a FetchFailed into their own error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from service.config import Settings
from service.net.guard import UrlRefused, checked_address, pinned, shown

MAX_REDIRECTS = 3


@dataclass(frozen=True)
class FetchLimits:
    allowed_hosts: frozenset[str]  # `host` or `host:port`, lower case
    max_bytes: int
    timeout_seconds: float


def image_fetch_limits(settings: Settings) -> FetchLimits:
    """The limits of every image fetched by URL: source images and provider answers alike
    (AIGNE_HUB_IMAGE_URL_ALLOWLIST, AIGNE_HUB_IMAGE_FETCH_MAX_BYTES, ..._TIMEOUT_SECONDS)."""
    return FetchLimits(settings.image_url_hosts, settings.image_fetch_max_bytes,
                       settings.image_fetch_timeout_seconds)


class FetchFailed(Exception):
    """Why a guarded fetch did not bring a body back. `reason`: INVALID_IMAGE_URL,
    IMAGE_URL_FORBIDDEN, IMAGE_TOO_LARGE, FETCH_TIMEOUT or FETCH_FAILED."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class GuardedFetcher:
    def __init__(self, limits: FetchLimits) -> None:
        self.limits = limits
        self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                       timeout=limits.timeout_seconds)

    async def fetch(self, url: str, accept: str = "image/*") -> bytes:
        """The body of `url`, or FetchFailed; a refused address is never contacted."""
        limits = self.limits
        try:
            async with asyncio.timeout(limits.timeout_seconds):
                for _ in range(MAX_REDIRECTS + 1):
                    address = await checked_address(url, limits.allowed_hosts)
                    location = await self._get(url, address, accept)
                    if isinstance(location, bytes):
                        return location
                    url = urljoin(url, location)
        except UrlRefused as refused:
            raise FetchFailed(refused.message, refused.reason) from None
        except TimeoutError:
            raise FetchFailed(f"fetching {shown(url)} took longer than "
                              f"{limits.timeout_seconds:g} s", "FETCH_TIMEOUT") from None
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            raise FetchFailed(f"could not fetch {shown(url)}: {type(exc).__name__}",
                              "FETCH_FAILED") from None
        raise FetchFailed(f"{shown(url)} redirects more than {MAX_REDIRECTS} times",
                          "FETCH_FAILED")

    async def _get(self, url: str, address: str, accept: str) -> bytes | str:
        """The body of `url` fetched from `address`, or the Location it redirects to."""
        target, headers, extensions = pinned(url, address)
        async with self._http.stream("GET", target, headers={**headers, "Accept": accept},
                                     extensions=extensions) as response:
            if response.is_redirect and "location" in response.headers:
                return response.headers["location"]
            if response.status_code != 200:
                raise FetchFailed(f"{shown(url)} answered HTTP {response.status_code}",
                                  "FETCH_FAILED")
            declared = int(response.headers.get("content-length") or 0)
            if declared > self.limits.max_bytes:
                raise _too_large(self.limits.max_bytes)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.limits.max_bytes:
                    raise _too_large(self.limits.max_bytes)
            return bytes(body)

    async def aclose(self) -> None:
        await self._http.aclose()


def _too_large(limit: int) -> FetchFailed:
    return FetchFailed(f"the image is larger than {limit} bytes", "IMAGE_TOO_LARGE")
