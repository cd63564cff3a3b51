"""Every call passes one interceptor: request id, deadline, API key (and admin rights for
admin methods), errors, the usage record of metered calls, the log line. Unary calls and
server streams alike: a stream's response metadata leaves with its first message, and an
error ends it with the same status whether or not messages were sent.

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
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.errors import DOMAIN, HubError, Internal, PermissionDenied, Unauthenticated
from service.keys import ApiKey, KeyStore
from service.usage import CallFacts, Meter, UsageRecorder

log = structlog.get_logger("aigne.hub")

MAX_MESSAGE_LENGTH = 1000
REST_ERROR_HEADER = "x-hub-error"
REST_STATUS_HEADER = "x-hub-http-status"


@dataclass
class Call:
    """What is known about the call in progress, for the servicer and the log line."""

    request_id: str
    method: str
    door: str
    deadline: float  # loop time by which the answer must be sent
    accepted_at: float = field(default_factory=time.time)
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

    @property
    def caller(self) -> ApiKey:
        """The caller's key; only public methods run without one."""
        if self.key is None:
            raise Unauthenticated("This method needs an API key.", reason="MISSING_API_KEY")
        return self.key


_current: ContextVar[Call] = ContextVar("aigne_hub_call")


def current_call() -> Call:
    return _current.get()


Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncGenerator[Any, None]]


class HubInterceptor(grpc.aio.ServerInterceptor):
    """`public_methods` need no key; methods under `admin_prefixes` need an admin key;
    `metered_methods` leave a usage record."""

    def __init__(self, keys: KeyStore, usage: UsageRecorder, *, public_methods: frozenset[str],
                 admin_prefixes: tuple[str, ...], metered_methods: frozenset[str],
                 request_timeout: float) -> None:
        self._keys = keys
        self._usage = usage
        self._public = public_methods
        self._admin = admin_prefixes
        self._metered = metered_methods
        self._timeout = request_timeout
        self._later: set[asyncio.Future[None]] = set()  # records of detached work

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is not None and handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler is None or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self._wrap(method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, method: str, behavior: Behavior) -> Behavior:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = self._begin(method, context)
            token = _current.set(call)
            try:
                response = await self._run(method, call, behavior, request, context)
            except HubError as error:
                await self._end(method, call, error.reason, error.http_status)
                await _abort(context, call, error)
            except grpc.aio.AbortError:
                await self._end(method, call, "ABORTED_BY_HANDLER", 500)
                raise
            except asyncio.CancelledError:
                await self._end_cancelled(method, call)
                raise
            except Exception:
                log.exception("unexpected error", request_id=call.request_id, method=method)
                await self._end(method, call, "INTERNAL", 500)
                await _abort(context, call, Internal(
                    f"Something went wrong on our side (request {call.request_id})."))
            else:
                await self._end(method, call, "OK", 200)
                await context.send_initial_metadata(
                    (*call.response_headers, ("x-request-id", call.request_id)))
                return response
            finally:
                _current.reset(token)

        return unary

    def _wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def stream(request: Any, context: grpc.aio.ServicerContext
                         ) -> AsyncGenerator[Any, None]:
            call = self._begin(method, context)
            token = _current.set(call)
            started = False
            try:
                await self._authorize(method, call, context)
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
            except Exception:
                log.exception("unexpected error", request_id=call.request_id, method=method)
                await self._end(method, call, "INTERNAL", 500)
                await _abort(context, call, Internal(
                    f"Something went wrong on our side (request {call.request_id})."))
            else:
                failure = call.failure
                await self._end(method, call, failure.reason if failure else "OK",
                                failure.http_status if failure else 200)
            finally:
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
        await self._authorize(method, call, context)
        return await behavior(request, context)

    async def _authorize(self, method: str, call: Call, context: grpc.aio.ServicerContext
                         ) -> None:
        if method not in self._public:
            call.key = await self._keys.authenticate(_metadata(context, "authorization"))
        if method.startswith(self._admin) and not (call.key and call.key.admin):
            raise PermissionDenied("This API key may not call the admin API.",
                                   reason="ADMIN_KEY_REQUIRED")

    async def _end(self, method: str, call: Call, status: str, http_status: int) -> None:
        """Record a metered call's usage and write the log line, before the answer leaves
        (so a client that has its answer finds the record, and its quota settled)."""
        _log_line(call, status)
        if method in self._metered and call.key is not None and call.meter.record:
            await self._usage.finish(call.meter, CallFacts(
                call.key.id, call.request_id, call.door, call.accepted_at, status, http_status))

    def _begin(self, method: str, context: grpc.aio.ServicerContext) -> Call:
        loop = asyncio.get_running_loop()
        remaining = context.time_remaining()
        budget = self._timeout if remaining is None else min(remaining, self._timeout)
        return Call(
            request_id=_metadata(context, "x-request-id") or uuid.uuid4().hex,
            method=method.rsplit("/", 1)[-1],
            door="rest" if _metadata(context, "x-hub-door") == "rest" else "grpc",
            deadline=loop.time() + budget,
            idempotency_key=_metadata(context, "idempotency-key"),
        )

    async def drain(self) -> None:
        """Wait for the records of detached work still being written (at shutdown)."""
        await asyncio.gather(*self._later, return_exceptions=True)


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


def _log_line(call: Call, status: str) -> None:
    log.info(
        "request",
        request_id=call.request_id,
        method=call.method,
        door=call.door,
        key_id=call.key.id if call.key else None,
        status=status,
        duration_ms=round((time.time() - call.accepted_at) * 1000, 1),
        **call.log,
    )
