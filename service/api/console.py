"""The ConsoleService servicer: the web console's files and the OpenAPI document, over the
REST door (`GET /console/...`, `GET /api/openapi.json`), so the stack serves its own console
with no other web server and no internet.

The console is plain HTML, CSS and ES modules under console/ at the repository root; nothing
is built. Each answer is the file's bytes with its Content-Type, and security headers sent as
response metadata (Envoy makes them HTTP headers): a Content-Security-Policy that allows
scripts, styles and requests only from this origin (and images from the image URLs' origin),
`nosniff`, no framing, no referrer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

from google.api import httpbody_pb2

from aigne.hub.v1 import console_service_pb2 as pb
from aigne.hub.v1 import console_service_pb2_grpc as pb_grpc
from service.errors import NotFound
from service.rpc.call import current_call

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_DIR = ROOT / "console"
OPENAPI_FILE = ROOT / "gen" / "openapi" / "aigne_hub.openapi.json"
INDEX = "index.html"
MAX_PATH = 255  # no console file's path is longer; longer ones are 404 before the disk

# Only these kinds of file are served; anything else under console/ is 404.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
}


def content_security_policy(image_origin: str) -> str:
    """The console's policy: nothing inline, no eval, nothing from elsewhere, except the
    images the API hands out (their URLs live under the configured public base, which a
    deployment may put on another origin than the one the console is opened on)."""
    extra = f" {image_origin}" if image_origin else ""
    return "; ".join((
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        f"img-src 'self' data: blob:{extra}",
        f"connect-src 'self'{extra}",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ))


def security_headers(image_origin: str) -> list[tuple[str, str]]:
    return [
        ("content-security-policy", content_security_policy(image_origin)),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
        ("cache-control", "no-cache"),
    ]


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


class ConsoleServicer(pb_grpc.ConsoleServiceServicer):
    def __init__(self, *, public_base: str, console_dir: Path = CONSOLE_DIR,
                 openapi_file: Path = OPENAPI_FILE) -> None:
        self._dir = console_dir.resolve()
        self._openapi = openapi_file
        self._headers = security_headers(origin_of(public_base))

    async def GetConsoleAsset(self, request: pb.GetConsoleAssetRequest,
                              context: object) -> httpbody_pb2.HttpBody:
        path = self._resolve(request.path)
        return self._answer(await asyncio.to_thread(path.read_bytes),
                            CONTENT_TYPES[path.suffix])

    async def GetOpenApiDocument(self, request: pb.GetOpenApiDocumentRequest,
                                 context: object) -> httpbody_pb2.HttpBody:
        try:
            data = await asyncio.to_thread(self._openapi.read_bytes)
        except FileNotFoundError:
            raise NotFound("The OpenAPI document was not generated: run `make gen`.") from None
        return self._answer(data, "application/json")

    def _resolve(self, asked: str) -> Path:
        """The file under console/ that `asked` names, or NotFound: no hidden files, no
        way out of the folder, only the kinds of file listed above."""
        missing = NotFound(f"No console file at /console/{_shown(asked)}")
        relative = asked.strip("/") or INDEX
        parts = relative.split("/")
        if (len(relative) > MAX_PATH or "\x00" in relative
                or any(part in ("", ".", "..") or part.startswith(".") for part in parts)):
            raise missing
        try:  # a name the file system refuses (too long, say) is no file either
            path = (self._dir / relative).resolve()
            found = path.is_relative_to(self._dir) and path.is_file()
        except (OSError, ValueError):
            found = False
        if not found or path.suffix not in CONTENT_TYPES:
            raise missing
        return path

    def _answer(self, data: bytes, content_type: str) -> httpbody_pb2.HttpBody:
        current_call().response_headers.extend(self._headers)
        return httpbody_pb2.HttpBody(content_type=content_type, data=data)


def _shown(asked: str) -> str:
    """A path as it may appear in an error message: printable, bounded."""
    text = "".join(c if c.isprintable() else "?" for c in asked[:120])
    return text if len(asked) <= 120 else text + "..."
