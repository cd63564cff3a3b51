"""How a call ended, as one `Outcome`: what its usage record, metrics and log line say, and
what the interceptor (service/rpc/interceptor.py) does next. `outcome_of` is the one mapping,
for unary calls and streams alike, of the exception that ended a call."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc

from service.errors import HubError, ShuttingDown
from service.rpc.call import Call
from service.rpc.status import unexpected


@dataclass(frozen=True)
class Outcome:
    """How a call ended: what its usage record, metrics and log line say, and what the
    wrapper does next."""

    status: str  # "OK", "CANCELLED", "ABORTED_BY_HANDLER" or the error's reason
    http_status: int
    error: HubError | None = None  # sent to the client as the call's status
    reraise: bool = False  # the exception goes on to grpc (its own abort, a cancellation)
    client_left: bool = False  # work the call left detached is recorded when it ends

    @classmethod
    def failed(cls, error: HubError, *, send: bool = True) -> Outcome:
        return cls(error.reason, error.http_status, error=error if send else None)


OK = Outcome("OK", 200)
CANCELLED = Outcome("CANCELLED", 499, reraise=True, client_left=True)


def outcome_of(exc: Exception | asyncio.CancelledError | GeneratorExit, call: Call) -> Outcome:
    """The one mapping, for unary calls and streams alike, of the exception that ended a
    call to its outcome. A stream's GeneratorExit (grpc stopped reading: the client went
    away mid-send) is a cancellation like any other."""
    if isinstance(exc, HubError):
        return Outcome.failed(exc)
    if isinstance(exc, grpc.aio.AbortError):
        return Outcome("ABORTED_BY_HANDLER", 500, reraise=True)
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return CANCELLED
    return Outcome.failed(unexpected(exc, call))


def returned(call: Call) -> Outcome:
    """A stream whose handler returned: OK, or the failure a REST stream already sent as an
    event (its gRPC status stays OK, so there is nothing more to send)."""
    return OK if call.failure is None else Outcome.failed(call.failure, send=False)


def cut_off() -> Outcome:
    """A unary call cut off at shutdown: its task's cancellation is taken back so that the
    caller hears that the server shut down (and may send the request again), rather than a
    bare cancellation."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return Outcome.failed(ShuttingDown("The server shut down before this request finished; "
                                       "send it again.", retry_after=1))


def outcome_of_work(task: asyncio.Task[Any]) -> Outcome:
    """How detached work ended, for the record of the call it outlived."""
    if task.cancelled():
        return CANCELLED
    error = task.exception()
    if isinstance(error, HubError):
        return Outcome.failed(error)
    return OK if error is None else Outcome("INTERNAL", 500)
