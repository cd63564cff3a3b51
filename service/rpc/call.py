"""The call in progress: what the interceptor learned (request id, door, deadline, key) and
what the servicer adds (response headers, log fields, the request's Charge), reached
through `current_call()` by the servicer that runs in its context."""

from __future__ import annotations

import re
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from service.errors import HubError
from service.generation.context import RequestContext

# A request id a caller (or Envoy) gave is kept if it looks like one; else a new one is made.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


@dataclass(kw_only=True)
class Call(RequestContext):
    """A gRPC call, as the pipeline's RequestContext and for the log line and metrics."""

    method: str
    started: float = field(default_factory=time.perf_counter)
    # A failure that ended a REST stream after it started (sent as an event, so the gRPC
    # status is OK): what the usage record and the log line say.
    failure: HubError | None = None

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


_current: ContextVar[Call] = ContextVar("aigne_hub_call")


def current_call() -> Call:
    return _current.get()
