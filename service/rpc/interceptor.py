"""Every call passes one interceptor: request id, deadline, admission, API key (and admin
rights for admin methods), errors, the usage record of metered calls, metrics and the log
line. Unary calls and server streams alike: a stream's response metadata leaves with its
first message, and an error ends it with the same status whether or not messages were sent.
A stream whose method says its message is the whole answer (`call.answered_once`: the REST
door without `stream: true`) is recorded before that message leaves, as a unary call is; the
others when they end.

The interceptor makes the call's `Call` (service.rpc.call), which the servicer reads through
`current_call()`, fills `call.charge` on metered calls, and raises HubError. Both wrappers,
unary and stream, map whatever ended the call to one `Outcome` (service.rpc.outcome): the status
the usage record, metrics and log line (service.rpc.log_line) say, and the error the client
hears, sent as a google.rpc.Status made by service.rpc.status. A cancelled call whose work
goes on without its client (`call.detached`) is recorded when that work ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import trace

from service.accounting.charge import Charge
from service.accounting.key_cache import KeyCache
from service.accounting.keys import KeyStore
from service.accounting.quotas import Quotas
from service.accounting.usage import UsageRecorder
from service.errors import InvalidArgument, PermissionDenied
from service.ops.admission import Admission
from service.ops.metrics import Metrics
from service.rpc import log_line, wire
from service.rpc.call import Call, arrived, bound, metadata
from service.rpc.outcome import (
    CANCELLED,
    OK,
    Outcome,
    cut_off,
    outcome_of,
    outcome_of_work,
    returned,
)
from service.rpc.status import abort

_tracer = trace.get_tracer("aigne.hub")  # the no-op API's until ops/tracing sets the SDK up
Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncGenerator[Any, None]]


class HubInterceptor(grpc.aio.ServerInterceptor):
    """`public_methods` need no key; methods under `admin_prefixes` need an admin key;
    `metered_methods` leave a usage record; `quiet_methods` (probes, health checks) are
    neither logged at INFO nor counted in the request metrics."""

    def __init__(self, keys: KeyStore | KeyCache, usage: UsageRecorder, *,
                 quotas: Quotas | None = None,
                 public_methods: frozenset[str], admin_prefixes: tuple[str, ...],
                 metered_methods: frozenset[str], request_timeout: float,
                 admission: Admission | None = None, metrics: Metrics | None = None,
                 quiet_methods: frozenset[str] = frozenset(), log_prompts: bool = False) -> None:
        self._keys = keys
        self._usage = usage
        self._quotas = quotas
        self._public = public_methods
        self._admin = admin_prefixes
        self._metered = metered_methods
        self._timeout = request_timeout
        self._admission = admission or Admission(limit=1 << 30, methods=frozenset())
        self._metrics = metrics or Metrics()
        self._quiet = quiet_methods
        self._log_prompts = log_prompts
        self._later: set[asyncio.Future[None]] = set()  # records of detached work
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}  # wrapped once per method

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is not None and handler.unary_stream is not None:
            wrapped = grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=wire.serializer(handler.response_serializer),
            )
        elif handler is not None and handler.unary_unary is not None:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._wrap(method, handler.unary_unary),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=wire.serializer(handler.response_serializer),
            )
        else:
            return handler
        self._handlers[method] = wrapped
        return wrapped

    def _wrap(self, method: str, behavior: Behavior) -> Behavior:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = self._begin(method, context)
            with bound(call):
                admitted = False
                try:
                    admitted = self._admission.enter(method)
                    await self._authorize(method, call, context, request)
                    response = await behavior(request, context)
                except (Exception, asyncio.CancelledError) as exc:
                    outcome = outcome_of(exc, call)
                    if outcome.client_left and admitted and self._admission.cutting_off:
                        outcome = cut_off()
                    await self._settle(method, call, context, outcome)
                    if outcome.reraise:
                        raise
                else:
                    await self._settle(method, call, context, OK)
                    await context.send_initial_metadata(call.response_metadata())
                    return response
                finally:
                    if admitted:
                        self._admission.leave()

        return unary

    def _wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def stream(request: Any, context: grpc.aio.ServicerContext
                         ) -> AsyncGenerator[Any, None]:
            call = self._begin(method, context)
            with bound(call):
                started = admitted = settled = False
                try:
                    admitted = self._admission.enter(method)
                    await self._authorize(method, call, context, request)
                    async with contextlib.aclosing(behavior(request, context)) as responses:
                        async for response in responses:
                            if call.answered_once and not settled:  # as a unary call
                                settled = True  # (bench/rest_rpcs.py: after, it was slower)
                                await self._settle(method, call, context, returned(call))
                            if not started:
                                started = True
                                await context.send_initial_metadata(call.response_metadata())
                            yield response
                # GeneratorExit: grpc stopped reading, so the client went away mid-send.
                except (Exception, asyncio.CancelledError, GeneratorExit) as exc:
                    if settled:  # recorded already; the client left as the answer went
                        raise
                    outcome = outcome_of(exc, call)
                    if (outcome.client_left and admitted and self._admission.cutting_off
                            and not started and not isinstance(exc, GeneratorExit)):
                        outcome = cut_off()  # the REST door streams: its 503 too
                    await self._settle(method, call, context, outcome)
                    if outcome.reraise:
                        raise
                else:
                    if not settled:
                        await self._settle(method, call, context, returned(call))
                finally:
                    if admitted:
                        self._admission.leave()

        return stream

    async def _settle(self, method: str, call: Call, context: grpc.aio.ServicerContext,
                      outcome: Outcome) -> None:
        """Record how the call ended; then, if it ended in an error the client is to hear,
        send it (which raises grpc.aio.AbortError)."""
        if outcome.client_left:
            await self._end_cancelled(method, call)
        else:
            await self._end(method, call, outcome)
        if outcome.error is not None:
            await abort(context, call, outcome.error)

    async def _end_cancelled(self, method: str, call: Call) -> None:
        """The client went away. Work that goes on without it is recorded when it ends."""
        work = call.detached
        if work is None or work.done():
            await self._end(method, call, CANCELLED)
            return

        def ended(task: asyncio.Task[Any]) -> None:
            record = asyncio.ensure_future(self._end(method, call, outcome_of_work(task)))
            self._later.add(record)
            record.add_done_callback(self._later.discard)

        work.add_done_callback(ended)

    async def _authorize(self, method: str, call: Call, context: grpc.aio.ServicerContext,
                         request: Any) -> None:
        """The caller's key and rights; a request whose bytes did not decode is refused
        after that, so an anonymous caller learns only that it needs a key."""
        if method not in self._public:
            with _tracer.start_as_current_span("auth"):
                call.key = await self._keys.authenticate(metadata(context, "authorization"))
        if method.startswith(self._admin) and not (call.key and call.key.admin):
            raise PermissionDenied("This API key may not call the admin API.",
                                   reason="ADMIN_KEY_REQUIRED")
        if isinstance(request, Undecodable):
            raise InvalidArgument(f"The request is not a valid {request.type_name} message "
                                  "(its protobuf encoding is broken).", reason="INVALID_MESSAGE")

    async def _end(self, method: str, call: Call, outcome: Outcome) -> None:
        """Record a metered call's usage, count it and write the log line, before the answer
        leaves (so a client that has its answer finds the record, and its quota settled)."""
        quiet = method in self._quiet
        try:
            if method in self._metered:
                await call.charge.settle(outcome.status, outcome.http_status)
        finally:  # the duration then includes writing the record
            if not quiet:
                self._metrics.finished(call, outcome.status)
            log_line.write(call, outcome.status, quiet=quiet, prompts=self._log_prompts)

    def _begin(self, method: str, context: grpc.aio.ServicerContext) -> Call:
        call = arrived(method, context, self._timeout, self._open_charge)
        if method not in self._quiet:
            self._metrics.started(call)
        return call

    def _open_charge(self, request_id: str, door: str) -> Charge:
        return Charge(request_id=request_id, door=door, accepted_at=time.time(),
                      quotas=self._quotas, ledger=self._usage)

    async def drain(self) -> None:
        """Wait for the records of detached work still being written (at shutdown)."""
        await asyncio.gather(*self._later, return_exceptions=True)


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes are not a protobuf message of its type (gRPC would otherwise
    answer UNKNOWN, naming a Python exception)."""

    type_name: str


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return Undecodable(getattr(deserialize, "__qualname__", "request").split(".")[0])

    return parse

