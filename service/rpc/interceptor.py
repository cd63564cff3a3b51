"""Every call passes one interceptor: request id, deadline, admission, API key (and admin
rights for admin methods), errors, the usage record of metered calls, metrics and the log
line. Unary calls and server streams alike: a stream's response metadata leaves with its
first message, and an error ends it with the same status whether or not messages were sent.

The servicer reads what the interceptor learned through `current_call()`, fills
`call.meter` on metered calls, and raises HubError; this module turns the error into a
google.rpc.Status (ErrorInfo, BadRequest, RetryInfo, RequestInfo). For calls that came
through the REST door (Envoy marks them `x-hub-door: rest`) it also sends the OpenAI-shaped
JSON body and the HTTP status as metadata, which Envoy's Lua filter puts on the wire, so
both doors say the same thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service import db
from service.accounting.charge import Charge
from service.accounting.key_cache import KeyCache
from service.accounting.keys import KeyStore
from service.accounting.quotas import Quotas
from service.accounting.usage import UsageRecorder
from service.errors import (
    DOMAIN,
    HubError,
    Internal,
    InvalidArgument,
    PermissionDenied,
    ShuttingDown,
)
from service.ops.admission import Admission
from service.ops.metrics import Metrics
from service.rpc import wire
from service.rpc.call import REQUEST_ID, Call, _current

log = structlog.get_logger("aigne.hub")

MAX_MESSAGE_LENGTH = 1000
REST_ERROR_HEADER = "x-hub-error"
REST_STATUS_HEADER = "x-hub-http-status"
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
                response_serializer=handler.response_serializer,
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
            token = _current.set(call)
            admitted = False
            try:
                admitted = self._admission.enter(method)
                response = await self._run(method, call, behavior, request, context)
            except HubError as error:
                await self._end(method, call, error.reason, error.http_status)
                await _abort(context, call, error)
            except grpc.aio.AbortError:
                await self._end(method, call, "ABORTED_BY_HANDLER", 500)
                raise
            except asyncio.CancelledError:
                if not (admitted and self._admission.cutting_off):
                    await self._end_cancelled(method, call)
                    raise
                _uncancel()  # cut off at shutdown: say so, rather than a bare cancellation
                failure: HubError = ShuttingDown("The server shut down before this request "
                                                 "finished; send it again.", retry_after=1)
                await self._end(method, call, failure.reason, failure.http_status)
                await _abort(context, call, failure)
            except Exception as exc:
                failure = _unexpected(exc, call)
                await self._end(method, call, failure.reason, failure.http_status)
                await _abort(context, call, failure)
            else:
                await self._end(method, call, "OK", 200)
                await context.send_initial_metadata(
                    (*call.response_headers, ("x-request-id", call.request_id)))
                return response
            finally:
                if admitted:
                    self._admission.leave()
                _current.reset(token)

        return unary

    def _wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def stream(request: Any, context: grpc.aio.ServicerContext
                         ) -> AsyncGenerator[Any, None]:
            call = self._begin(method, context)
            token = _current.set(call)
            started = admitted = False
            try:
                admitted = self._admission.enter(method)
                await self._authorize(method, call, context, request)
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        if not started:
                            started = True
                            await context.send_initial_metadata(
                                (*call.response_headers, ("x-request-id", call.request_id)))
                        yield response
            except GeneratorExit:  # grpc stopped reading: the client went away mid-send
                await self._end_cancelled(method, call)
                raise
            except HubError as error:
                await self._end(method, call, error.reason, error.http_status)
                await _abort(context, call, error)
            except grpc.aio.AbortError:
                await self._end(method, call, "ABORTED_BY_HANDLER", 500)
                raise
            except asyncio.CancelledError:
                await self._end_cancelled(method, call)
                raise
            except Exception as exc:
                failure = _unexpected(exc, call)
                await self._end(method, call, failure.reason, failure.http_status)
                await _abort(context, call, failure)
            else:
                ended = call.failure
                await self._end(method, call, ended.reason if ended else "OK",
                                ended.http_status if ended else 200)
            finally:
                if admitted:
                    self._admission.leave()
                with contextlib.suppress(ValueError):  # closed from another context
                    _current.reset(token)

        return stream

    async def _end_cancelled(self, method: str, call: Call) -> None:
        """The client went away. Work that goes on without it is recorded when it ends."""
        work = call.detached
        if work is None or work.done():
            await self._end(method, call, "CANCELLED", 499)
            return

        def ended(task: asyncio.Task[Any]) -> None:
            error = None if task.cancelled() else task.exception()
            if task.cancelled():
                status, http_status = "CANCELLED", 499
            elif isinstance(error, HubError):
                status, http_status = error.reason, error.http_status
            else:
                status, http_status = ("OK", 200) if error is None else ("INTERNAL", 500)
            record = asyncio.ensure_future(self._end(method, call, status, http_status))
            self._later.add(record)
            record.add_done_callback(self._later.discard)

        work.add_done_callback(ended)

    async def _run(self, method: str, call: Call, behavior: Behavior, request: Any,
                   context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(method, call, context, request)
        return await behavior(request, context)

    async def _authorize(self, method: str, call: Call, context: grpc.aio.ServicerContext,
                         request: Any) -> None:
        """The caller's key and rights; a request whose bytes did not decode is refused
        after that, so an anonymous caller learns only that it needs a key."""
        if method not in self._public:
            call.key = await self._keys.authenticate(_metadata(context, "authorization"))
        if method.startswith(self._admin) and not (call.key and call.key.admin):
            raise PermissionDenied("This API key may not call the admin API.",
                                   reason="ADMIN_KEY_REQUIRED")
        if isinstance(request, Undecodable):
            raise InvalidArgument(f"The request is not a valid {request.type_name} message "
                                  "(its protobuf encoding is broken).", reason="INVALID_MESSAGE")

    async def _end(self, method: str, call: Call, status: str, http_status: int) -> None:
        """Record a metered call's usage, count it and write the log line, before the answer
        leaves (so a client that has its answer finds the record, and its quota settled)."""
        quiet = method in self._quiet
        if not quiet:
            self._metrics.finished(call, status)
        _log_line(call, status, quiet=quiet, prompts=self._log_prompts)
        if method in self._metered:
            await call.charge.settle(status, http_status)

    def _begin(self, method: str, context: grpc.aio.ServicerContext) -> Call:
        loop = asyncio.get_running_loop()
        remaining = context.time_remaining()
        budget = self._timeout if remaining is None else min(remaining, self._timeout)
        given = _metadata(context, "x-request-id")
        charge = Charge(
            request_id=given if given and REQUEST_ID.match(given) else uuid.uuid4().hex,
            door="rest" if _metadata(context, "x-hub-door") == "rest" else "grpc",
            accepted_at=time.time(), quotas=self._quotas, ledger=self._usage)
        call = Call(charge=charge, method=method.rsplit("/", 1)[-1],
                    deadline=loop.time() + budget,
                    idempotency_key=_metadata(context, "idempotency-key"))
        if method not in self._quiet:
            self._metrics.started(call)
        return call

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


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _unexpected(exc: Exception, call: Call) -> HubError:
    """An exception that is not a HubError: a database outage the caller should hear about,
    or a bug, which the caller hears of only as INTERNAL (the details go to the log)."""
    if isinstance(exc, HubError):
        return exc
    known = db.hub_error(exc)
    if known is not None:
        log.warning("database error", request_id=call.request_id, method=call.method,
                    reason=known.reason, error=repr(exc)[:300])
        return known
    log.exception("unexpected error", request_id=call.request_id, method=call.method)
    return Internal(f"Something went wrong on our side (request {call.request_id}).")


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else None
    return None


async def _abort(context: grpc.aio.ServicerContext, call: Call, error: HubError) -> None:
    message = _clip(error.message)
    status = to_status(error, message, call.request_id)
    grpc_status = rpc_status.to_status(status)
    trailers: list[tuple[str, str | bytes]] = [*grpc_status.trailing_metadata,
                                               ("x-request-id", call.request_id)]
    if error.retry_after is not None:
        trailers.append(("retry-after", str(max(1, round(error.retry_after)))))
    if call.door == "rest":
        body = error.openai_body()
        body["error"]["message"] = message  # type: ignore[index]
        trailers.append((REST_ERROR_HEADER, json.dumps(body, ensure_ascii=True)))
        trailers.append((REST_STATUS_HEADER, str(error.http_status)))
    await context.abort(grpc_status.code, grpc_status.details, tuple(trailers))


def to_status(error: HubError, message: str, request_id: str) -> status_pb2.Status:
    """The google.rpc.Status a gRPC client receives for `error`."""
    metadata = {**error.metadata, "http_status": str(error.http_status)}
    if error.param:
        metadata["param"] = error.param
    details: list[Any] = [error_details_pb2.ErrorInfo(
        reason=error.reason, domain=DOMAIN, metadata=metadata)]
    if error.param:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=error.param, description=message, reason=error.reason)]))
    if error.retry_after is not None:
        details.append(error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=max(1, round(error.retry_after)))))
    details.append(error_details_pb2.RequestInfo(request_id=request_id))
    status = status_pb2.Status(code=error.code, message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_LENGTH else message[:MAX_MESSAGE_LENGTH] + "…"


def _log_line(call: Call, status: str, *, quiet: bool, prompts: bool) -> None:
    """One line per call: who, what, how it ended and how long it took. Never a key or image
    bytes; the prompt only when the operator asked for it."""
    charge = call.charge
    fields: dict[str, Any] = {
        "request_id": call.request_id, "method": call.method, "door": call.door,
        "key_id": call.key.id if call.key else None, "status": status,
        "duration_ms": round(call.elapsed() * 1000, 1),
    }
    for name, value in (("model", call.model), ("served", call.served),
                        ("response_format", charge.response_format)):
        if value:
            fields[name] = value
    if charge.generation is not None:
        fields["upstream_ms"] = round(charge.generation.upstream_seconds * 1000, 1)
    if charge.images:
        fields.update(images=charge.images, image_bytes=charge.bytes)
    if prompts and charge.prompt is not None:
        fields["prompt"] = charge.prompt
    (log.debug if quiet else log.info)("request", **{**call.log, **fields})
