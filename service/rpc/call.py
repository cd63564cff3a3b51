"""The call in progress: what the interceptor learned when it arrived (request id, door,
deadline, idempotency key), the caller's key once authenticated, and what the servicer adds
as it goes (the usage meter, log fields, response headers, a stream's failure).

The interceptor makes a `Call` for each request (`arrived`) and binds it for the request's
duration (`bound`); the servicer and the layers it calls read it through `current_call()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc

from service.accounting.keys import ApiKey
from service.accounting.usage import Meter
from service.errors import HubError, Unauthenticated

# A request id a caller (or Envoy) gave is kept if it looks like one; else a new one is made.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


@dataclass
class Call:
    """What is known about the call in progress, for the servicer and the log line."""

    request_id: str
    method: str
    door: str
    deadline: float  # loop time by which the answer must be sent
    accepted_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    key: ApiKey | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    log: dict[str, Any] = field(default_factory=dict)
    meter: Meter = field(default_factory=Meter)  # recorded for metered methods
    idempotency_key: str | None = None  # the `idempotency-key` metadata, if sent
    # Work that goes on when the client goes away (an idempotent request's generation, kept
    # for its retries): the call is recorded when the work ends, not when the client left.
    detached: asyncio.Task[Any] | None = None
    # A failure that ended a REST stream after it started (sent as an event, so the gRPC
    # status is OK): what the usage record and the log line say.
    failure: HubError | None = None

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def model(self) -> str:
        """The registry's name of the model asked for ('' before it is known): never what a
        caller typed, so it is safe as a metric label."""
        route = self.meter.route
        return route.requested.name if route is not None else ""

    @property
    def served(self) -> str:
        route = self.meter.route
        return route.served.name if route is not None else ""

    @property
    def caller(self) -> ApiKey:
        """The caller's key; only public methods run without one."""
        if self.key is None:
            raise Unauthenticated("This method needs an API key.", reason="MISSING_API_KEY")
        return self.key

    def response_metadata(self) -> tuple[tuple[str, str], ...]:
        """The headers a successful answer leaves with (a stream's, with its first message)."""
        return (*self.response_headers, ("x-request-id", self.request_id))


_current: ContextVar[Call] = ContextVar("aigne_hub_call")


def current_call() -> Call:
    return _current.get()


def arrived(method: str, context: grpc.aio.ServicerContext, budget: float) -> Call:
    """The call for a request that just arrived: the caller's request id if it looks like
    one, the door it came through, and a deadline at most `budget` seconds away."""
    loop = asyncio.get_running_loop()
    remaining = context.time_remaining()
    given = metadata(context, "x-request-id")
    return Call(
        request_id=given if given and REQUEST_ID.match(given) else uuid.uuid4().hex,
        method=method.rsplit("/", 1)[-1],
        door="rest" if metadata(context, "x-hub-door") == "rest" else "grpc",
        deadline=loop.time() + (budget if remaining is None else min(remaining, budget)),
        idempotency_key=metadata(context, "idempotency-key"),
    )


@contextlib.contextmanager
def bound(call: Call) -> Iterator[Call]:
    """`call` is what `current_call()` answers inside the block."""
    token = _current.set(call)
    try:
        yield call
    finally:
        with contextlib.suppress(ValueError):  # a stream closed from another context
            _current.reset(token)


def metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    """The request's text metadata `key`, if it was sent."""
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else None
    return None
