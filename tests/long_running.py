"""Helpers for the tests of long generations (idempotent retries, streams, jobs): a stack
with the fake providers, an admin key and quick job and webhook timings; a webhook
receiver; a reader of Server-Sent Events; a poll."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.fakes.server import FakeServer, Received, Reply
from tests.hub import Hub
from tests.stack import Stack

T = TypeVar("T")

# Quick enough for tests, and otherwise the shipped behaviour.
FAST_JOBS = {
    "AIGNE_HUB_JOB_POLL_SECONDS": "0.2",
    "AIGNE_HUB_JOB_LEASE_SECONDS": "3",
    "AIGNE_HUB_JOB_STOP_GRACE_SECONDS": "0.5",
    "AIGNE_HUB_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
    "AIGNE_HUB_STREAM_HEARTBEAT_SECONDS": "0.5",
}


def long_stack_env(provider_env: dict[str, str], database_url: str,
                   receiver: WebhookReceiver | None = None) -> dict[str, str]:
    """The provider stack's settings, on `database_url`, with an admin key and the
    webhook receiver on the allowlist."""
    env = {**provider_env, **Hub.env(database_url), **FAST_JOBS,
           "AIGNE_HUB_MODELS_FILE": provider_env["AIGNE_HUB_MODELS_FILE"]}
    if receiver is not None:
        env["AIGNE_HUB_WEBHOOK_URL_ALLOWLIST"] = f"127.0.0.1:{receiver.port}"
    return env


@contextmanager
def long_hub(var_dir: Path, provider_env: dict[str, str], database_url: str,
             receiver: WebhookReceiver | None = None) -> Iterator[Hub]:
    """A running stack of `long_stack_env`, with its admin client; stopped at the end."""
    with Stack(var_dir, env=long_stack_env(provider_env, database_url, receiver)) as stack:
        running = Hub(stack, database_url.split(":", 1)[0])
        try:
            yield running
        finally:
            running.close()


class WebhookReceiver(FakeServer):
    """A web server that takes webhooks: 204 unless scripted otherwise."""

    def route(self, method: str, path: str) -> str | None:
        return path.split("?")[0].lstrip("/") or "root"

    def answer(self, route: str, request: Received) -> Reply:
        return Reply(204, raw=b"")

    def deliveries(self, route: str) -> list[Received]:
        return self.requests_to(route)


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event, and when it arrived (seconds since the request was sent)."""

    name: str
    data: dict[str, Any]
    at: float


def read_events(lines: Iterable[str], started: float) -> list[Event]:
    """Server-Sent Events from a response's lines (`event:` and `data:` fields)."""
    events, name, data = [], "message", []
    for line in lines:
        if line == "":
            if data:
                events.append(Event(name, json.loads("\n".join(data)),
                                    time.monotonic() - started))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    return events


def wait_for(check: Callable[[], T | None], timeout: float = 30, every: float = 0.1) -> T:
    """The first truthy value `check` gives, polling; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing after {timeout} s")
        time.sleep(every)


def stack_log(var_dir: Path) -> str:
    return (var_dir / "stack.log").read_text(errors="replace")
