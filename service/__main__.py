"""Command line: `python -m service serve|run|keys|usage|envoy-config`.

    serve          the gRPC server alone
    run [--replicas N]
                   the server and Envoy together (what `make run` starts); Ctrl-C stops both;
                   with N > 1, N server processes behind one Envoy (`make run REPLICAS=N`)
    keys create NAME [--admin] [LIMITS] | keys list | keys limits ID_OR_PREFIX LIMITS
        | keys revoke ID_OR_PREFIX
                   LIMITS: [--models M,M|all] [--daily N] [--monthly N] [--rpm N]
                   [--expires DATE|never]; 0 removes a quota
    usage [--key ID] [--since DATE] [--until DATE] [--model M]
                   usage totals per UTC day and model (every key unless --key)
    deployments add NAME --kind openai|azure|gemini|vertex [OPTIONS] | deployments set ID
        [OPTIONS] | deployments list | deployments remove ID | deployments test [ID]
        | deployments reseal
                   OPTIONS: [--base-url URL] [--api-version V] [--models M,M|all]
                   [--map MODEL=NAME]... [--option KEY=VALUE]... [--priority N] [--weight N]
                   [--disabled|--enabled]
    credentials add DEPLOYMENT [--name N] [--weight N] [--secret-env VAR] (secret on stdin)
        | credentials set ID [--weight N] [--disable] | credentials remove ID
    envoy-config [--sds]
                   print the Envoy config rendered from the settings (--sds: the SDS files
                   of its TLS secrets, as JSON, for a ConfigMap beside it)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import structlog

from service import db
from service.accounting.keys import KeyStore
from service.cli import deployments as deployments_cli
from service.cli import keys as cli
from service.config import Settings
from service.errors import HubError, KnownSecrets
from service.ops import envoy, envoy_edges, logs, ports, replicas
from service.server import Hub, create_server, log_serving, serve

log = structlog.get_logger("aigne.hub")
ENVOY_FLUSH_SECONDS = 0.5  # at least this long for Envoy to write answers just sent


def parser_of_commands() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the gRPC server")
    run_command = commands.add_parser("run", help="run the server and Envoy (make run)")
    run_command.add_argument("--replicas", type=int, default=1, metavar="N",
                             help="server processes behind Envoy, on ports from "
                                  "AIGNE_HUB_GRPC_PORT up (default 1)")
    envoy_config = commands.add_parser("envoy-config", help="print the rendered Envoy config")
    envoy_config.add_argument("--sds", action="store_true",
                              help="print the SDS files of its TLS secrets instead (JSON)")
    cli.add_commands(commands)
    deployments_cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser_of_commands().parse_args(argv)
    settings = Settings()
    secrets = KnownSecrets()  # provider credentials, masked in the log and in answers
    logs.configure(settings.log_level, secrets)
    if args.command == "run" and (problems := ports.taken(settings, args.replicas)):
        print("\n".join(f"error: {problem}" for problem in problems), file=sys.stderr)
        return 1
    if args.command == "serve":
        in_loop(settings, serve(settings, secrets))
    elif args.command == "run" and args.replicas > 1:
        return in_loop(settings, replicas.run(settings, args.replicas, ensure_first_key))
    elif args.command == "run":
        return in_loop(settings, run(settings, secrets))
    elif args.command == "envoy-config":
        print(json.dumps(envoy_edges.sds_files(settings)) if args.sds else envoy.render(settings))
    else:
        command = {"keys": cli.keys_command, "usage": cli.usage_command,
                   "deployments": deployments_cli.deployments_command,
                   "credentials": deployments_cli.credentials_command}[args.command]
        try:
            return in_loop(settings, command(settings, args))
        except Exception as exc:  # a HubError, or a database that cannot do its part
            error = exc if isinstance(exc, HubError) else db.hub_error(exc)
            if error is None:
                raise
            print(f"error: {error.message}", file=sys.stderr)
            return 1
    return 0


T = TypeVar("T")


def in_loop(settings: Settings, main: Coroutine[Any, Any, T]) -> T:
    """`main` run to its end on the configured event loop (AIGNE_HUB_EVENT_LOOP): uvloop
    where it is installed (not on Windows), else asyncio's own."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if settings.event_loop == "uvloop":
        try:
            import uvloop
            factory = uvloop.new_event_loop
        except ImportError:  # no uvloop for this platform
            factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


async def run(settings: Settings, secrets: KnownSecrets | None = None) -> int:
    """The server and Envoy, until Ctrl-C or SIGTERM; nothing is left running after. The
    exit status: 1 if a part failed to start or stopped by itself (Envoy exited)."""
    settings = settings.with_generated_secrets()
    # Envoy first, while this process has no threads yet (its child dies with us).
    proxy = envoy.start(envoy.write_config(settings, settings.var_dir / "envoy.yaml"),
                        concurrency=settings.envoy_concurrency,
                        drain_seconds=settings.shutdown_grace_seconds)
    hub = None
    try:
        hub = await create_server(settings, secrets)
        if not await envoy.wait_ready(settings.envoy_admin_port, proxy):
            print("error: Envoy did not start: see its log above", file=sys.stderr)
            return 1
        key_note = await ensure_first_key(hub.parts.keys, settings)
        log_serving(settings, hub)
        print(f"\nAIGNE Hub image service\n"
              f"  REST  POST {settings.edge_url}/api/images/generations\n"
              f"  Console  {settings.edge_url}/console/\n"
              f"  gRPC  {settings.host}:{settings.http_port} (Envoy"
              f"{', TLS' if settings.edge_tls else ''}), "
              f"{settings.host}:{hub.port} (server)\n"
              f"  default model: {hub.default_model}\n  {key_note}\n"
              f"  Ctrl-C stops both.\n", flush=True)
        return 0 if await _until_stopped(proxy) else 1
    finally:
        await _shut_down(hub, proxy, settings)


async def _shut_down(hub: Hub | None, proxy: subprocess.Popen[bytes],
                     settings: Settings) -> None:
    """Drain both, then stop both. The server refuses new generations (503
    `shutting_down`) and Envoy tells clients to go; the generations in flight finish within
    the grace period, through the still-running Envoy, which then finishes writing their
    answers to the clients; only then does Envoy stop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.shutdown_grace_seconds
    if hub is not None:
        log.info("draining", grace_seconds=settings.shutdown_grace_seconds,
                 in_flight=hub.admission.in_flight)
        await hub.drain()
    if proxy.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            await envoy.drain(settings.envoy_admin_port)
    if hub is not None:
        await hub.stop(max(0.0, deadline - loop.time()))
    if proxy.poll() is None:
        with contextlib.suppress(httpx.HTTPError, TimeoutError):
            # At least a moment, for answers the server just sent to reach their clients.
            async with asyncio.timeout(max(ENVOY_FLUSH_SECONDS, deadline - loop.time())):
                await envoy.wait_idle(settings.envoy_admin_port)
        proxy.terminate()
    await asyncio.to_thread(proxy.wait)
    log.info("stopped")


async def _until_stopped(proxy: object) -> bool:
    """Wait for SIGTERM or SIGINT (True), or for Envoy to exit by itself (False)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def watch_envoy() -> None:
        await asyncio.to_thread(proxy.wait)  # type: ignore[attr-defined]
        print("Envoy exited; stopping.", file=sys.stderr)
        stop.set()

    watcher = asyncio.create_task(watch_envoy())
    await stop.wait()
    envoy_exited = watcher.done()
    watcher.cancel()
    return not envoy_exited


async def ensure_first_key(keys: KeyStore, settings: Settings) -> str:
    """On a first start with no key at all, make one admin key and keep it in var/."""
    path = settings.var_dir / "dev-api-key"
    if (settings.static_api_keys or settings.static_admin_api_keys
            or await keys.count_usable() > 0):
        return (f"API key: in {path}" if path.exists()
                else "API keys: use yours (python -m service keys create NAME makes one)")
    _, token = await keys.create("first key (make run)", admin=True, source="dev")
    _write_private(path, token + "\n")
    return f"API key (shown once, also in {path}): {token}"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)


if __name__ == "__main__":
    sys.exit(main())
