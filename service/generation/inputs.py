"""Source images for edits: an uploaded file's bytes, base64 (raw or a data URL) decoded, or
an http(s) URL fetched under a guard against server-side request forgery; either way checked
to be an image. A mask is loaded the same way, then checked to fit the first image.

The guard: only http and https; the host is resolved first and refused if any address is
not public (loopback, private, link-local, cloud metadata, reserved...) unless the host is
on the operator's allowlist; the connection then goes to the address that was checked (no
second DNS answer can slip in); redirects are followed by hand, each hop checked again;
the body is capped in size and the fetch in time. Anything wrong is an InvalidArgument
naming `image`, and a refused address is never contacted.
"""

from __future__ import annotations

import asyncio
import binascii
import io
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from service.errors import InvalidArgument
from service.providers.base import InputImage

MAX_PIXELS = 64_000_000
MAX_REDIRECTS = 3
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
_DATA_URL = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(rb"\s+")


@dataclass(frozen=True)
class FetchLimits:
    allowed_hosts: frozenset[str]  # `host` or `host:port`, lower case
    max_bytes: int
    timeout_seconds: float
    max_pixels: int = MAX_PIXELS  # the source images of one request together


class ImageLoader:
    """Turns the request's `image` strings into checked InputImages."""

    def __init__(self, limits: FetchLimits) -> None:
        self._limits = limits
        self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                       timeout=limits.timeout_seconds)

    async def load(self, sources: tuple[str | bytes, ...]) -> tuple[InputImage, ...]:
        images = tuple(await asyncio.gather(*(self._load_one(s, i)
                                              for i, s in enumerate(sources))))
        pixels = sum(image.width * image.height for image in images)
        if pixels > self._limits.max_pixels:
            raise InvalidArgument(
                f"The source images come to {pixels:,} pixels; a request may send at most "
                f"{self._limits.max_pixels:,}.", param="image", reason="IMAGE_TOO_LARGE")
        return images

    async def load_mask(self, source: str | bytes, image: InputImage) -> InputImage:
        """The mask of an edit of `image`: a PNG with an alpha channel, `image`'s size."""
        try:
            mask = await self._load_one(source, 0)
        except InvalidArgument as error:
            raise InvalidArgument(error.message.replace("image[0]", "mask", 1), param="mask",
                                  reason=error.reason) from None
        if mask.mime_type != "image/png" or not mask.alpha:
            raise InvalidArgument("mask must be a PNG with an alpha channel (transparent where "
                                  "the image is to be edited)", param="mask",
                                  reason="INVALID_MASK")
        if (mask.width, mask.height) != (image.width, image.height):
            raise InvalidArgument(f"mask is {mask.width}x{mask.height}; it must be the size of "
                                  f"the first image, {image.width}x{image.height}",
                                  param="mask", reason="INVALID_MASK")
        return mask

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _load_one(self, source: str | bytes, index: int) -> InputImage:
        if isinstance(source, bytes):  # an uploaded file
            data = source
        elif source[:8].lower().startswith(("http://", "https://")):
            data = await self._fetch(source, index)
        else:
            data = decode_base64(source, index)
        return await asyncio.to_thread(inspect, data, index)

    async def _fetch(self, url: str, index: int) -> bytes:
        try:
            async with asyncio.timeout(self._limits.timeout_seconds):
                for _ in range(MAX_REDIRECTS + 1):
                    address = await self._checked_address(url, index)
                    location = await self._get(url, address, index)
                    if isinstance(location, bytes):
                        return location
                    url = urljoin(url, location)
        except TimeoutError:
            raise _bad(index, f"fetching {_shown(url)} took longer than "
                              f"{self._limits.timeout_seconds:g} s") from None
        except httpx.HTTPError as exc:
            raise _bad(index, f"could not fetch {_shown(url)}: {type(exc).__name__}") from None
        raise _bad(index, f"{_shown(url)} redirects more than {MAX_REDIRECTS} times")

    async def _checked_address(self, url: str, index: int) -> str:
        """The address to connect to for `url`, after the guard has passed it."""
        try:
            return await checked_address(url, self._limits.allowed_hosts)
        except UrlRefused as refused:
            raise _bad(index, refused.message, reason=refused.reason) from None

    async def _get(self, url: str, address: str, index: int) -> bytes | str:
        """The body of `url` fetched from `address`, or the Location it redirects to."""
        target, headers, extensions = pinned(url, address)
        async with self._http.stream("GET", target, headers={**headers, "Accept": "image/*"},
                                     extensions=extensions) as response:
            if response.is_redirect and "location" in response.headers:
                return response.headers["location"]
            if response.status_code != 200:
                raise _bad(index, f"{_shown(url)} answered HTTP {response.status_code}")
            declared = int(response.headers.get("content-length") or 0)
            if declared > self._limits.max_bytes:
                raise _too_large(index, self._limits.max_bytes)
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._limits.max_bytes:
                    raise _too_large(index, self._limits.max_bytes)
            return bytes(body)


class UrlRefused(Exception):
    """A URL the guard does not let this server fetch from or post to."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


async def checked_address(url: str, allowed_hosts: frozenset[str]) -> str:
    """The address to connect to for `url`: its host resolved, and refused (UrlRefused) if
    any address is not public, unless the host (`host` or `host:port`) is allowed. Callers
    connect to this address (see `pinned`), so no second DNS answer can slip in."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused("URLs must be http or https with a host", "INVALID_IMAGE_URL")
    if parts.username or parts.password:
        raise UrlRefused("URLs must not carry credentials", "INVALID_IMAGE_URL")
    host = parts.hostname.lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UrlRefused(f"the port of {_shown(url)} is not valid", "INVALID_IMAGE_URL") from None
    allowed = {host, f"{host}:{port}"} & allowed_hosts
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise UrlRefused(f"the host of {_shown(url)} does not resolve",
                         "INVALID_IMAGE_URL") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not allowed and any(not _public(a) for a in addresses):
        raise UrlRefused(f"{_shown(url)} points at an address this server may not reach "
                         "(loopback, private, link-local or metadata)", "IMAGE_URL_FORBIDDEN")
    return str(addresses[0])


def pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """`url` aimed at the checked `address`: the URL to request, its Host header, and the
    TLS server name (httpx's `sni_hostname` extension)."""
    parts = urlsplit(url)
    netloc = f"[{address}]" if ":" in address else address
    if parts.port:
        netloc += f":{parts.port}"
    return (parts._replace(netloc=netloc).geturl(),
            {"Host": parts.netloc.rsplit("@", 1)[-1]}, {"sni_hostname": parts.hostname or ""})


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _shown(url: str) -> str:
    """A URL as it may appear in an error message: no query string, bounded length."""
    parts = urlsplit(url)
    text = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"
    return text if len(text) <= 120 else text[:117] + "..."


def _bad(index: int, message: str, reason: str = "INVALID_IMAGE") -> InvalidArgument:
    return InvalidArgument(f"image[{index}]: {message}", param="image", reason=reason)


def _too_large(index: int, limit: int) -> InvalidArgument:
    return _bad(index, f"the image is larger than {limit} bytes", reason="IMAGE_TOO_LARGE")


def decode_base64(source: str, index: int) -> bytes:
    text = _DATA_URL.sub("", source, count=1).encode("ascii", "replace")
    try:
        return binascii.a2b_base64(_WHITESPACE.sub(b"", text), strict_mode=True)
    except (binascii.Error, ValueError):
        raise _bad(index, "neither an http(s) URL nor valid base64") from None


def inspect(data: bytes, index: int) -> InputImage:
    """Check that `data` is an image we can use; read its type and size."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
            alpha = "A" in image.getbands() or "transparency" in image.info
            if width * height > MAX_PIXELS:
                raise _bad(index, f"the image is too large ({width}x{height})")
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError):
        raise _bad(index, "not a PNG, JPEG, WebP or GIF image") from None
    if kind not in FORMATS:
        raise _bad(index, f"a {kind} image; send PNG, JPEG or WebP")
    return InputImage(data=data, mime_type=FORMATS[kind], width=width, height=height,
                      alpha=alpha)
