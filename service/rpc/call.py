"""The call in progress: what the interceptor learned when it arrived (request id, door,
deadline, idempotency key), the caller's key once authenticated, and what the servicer adds
as it goes (the request's Charge, log fields, response headers, a stream's failure).
A Call is the generation pipeline's RequestContext, with what only the gRPC edge needs.

The interceptor makes a `Call` for each request (`arrived`) and binds it for the request's
duration (`bound`); the servicer and the layers it calls read it through `current_call()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import grpc

from service.accounting.charge import Charge
from service.errors import HubError
from service.generation.context import RequestContext

# A request id a caller (or Envoy) gave is kept if it looks like one; else a new one is made.
# Envoy applies the same rule first (envoy/hub.lua), so that behind it the id it answers and
# logs is the one the server uses: keep the two in step.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
# The subject of a client certificate Envoy verified, in the x-forwarded-client-cert it sets
# (and strips from what clients send) when AIGNE_HUB_TLS_CLIENT_CA_FILE is set.
CLIENT_SUBJECT = re.compile(r'Subject="((?:[^"\\]|\\.){1,256})"')


@dataclass(kw_only=True)
class Call(RequestContext):
    """What is known about the call in progress, for the servicer and the log line."""

    method: str
    started: float = field(default_factory=time.perf_counter)
    # A failure that ended a REST stream after it started (sent as an event, so the gRPC
    # status is OK): what the usage record and the log line say.
    failure: HubError | None = None
    # Set by a streaming method whose next message is its whole answer (a REST door that
    # answers once): the call is then recorded before that message leaves, as a unary one.
    answered_once: bool = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def model(self) -> str:
        """The registry's name of the model asked for ('' before it is known): never what a
        caller typed, so it is safe as a metric label."""
        route = self.charge.route
        return route.requested.name if route is not None else ""

    @property
    def served(self) -> str:
        route = self.charge.route
        return route.served.name if route is not None else ""

    def response_metadata(self) -> tuple[tuple[str, str], ...]:
        """The headers a successful answer leaves with (a stream's, with its first message)."""
        return (*self.response_headers, ("x-request-id", self.request_id))


_current: ContextVar[Call] = ContextVar("aigne_hub_call")


def current_call() -> Call:
    return _current.get()


def arrived(method: str, context: grpc.aio.ServicerContext, budget: float,
            open_charge: Callable[[str, str], Charge]) -> Call:
    """The call for a request that just arrived: the caller's request id if it looks like
    one, the door it came through, a deadline at most `budget` seconds away, and its Charge
    (`open_charge(request_id, door)`)."""
    loop = asyncio.get_running_loop()
    remaining = context.time_remaining()
    given = metadata(context, "x-request-id")
    request_id = given if given and REQUEST_ID.match(given) else uuid.uuid4().hex
    door = "rest" if metadata(context, "x-hub-door") == "rest" else "grpc"
    call = Call(
        charge=open_charge(request_id, door), method=method.rsplit("/", 1)[-1],
        deadline=loop.time() + (budget if remaining is None else min(remaining, budget)),
        idempotency_key=metadata(context, "idempotency-key"),
    )
    client = CLIENT_SUBJECT.search(metadata(context, "x-forwarded-client-cert") or "")
    if client:
        call.log["client_cert"] = client.group(1)
    return call


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
