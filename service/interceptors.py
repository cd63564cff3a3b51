"""Every call passes one interceptor: request id, deadline, admission, API key, errors,
metrics and the log line.

The servicer reads what the interceptor learned through `current_call()`, and raises
HubError; this module turns the error into a google.rpc.Status (ErrorInfo, BadRequest,
RetryInfo, RequestInfo). For calls that came through the REST door (Envoy marks them
`x-hub-door: rest`) it also sends the OpenAI-shaped JSON body and the HTTP status as
metadata, which Envoy's Lua filter puts on the wire, so both doors say the same thing.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service import answers, db
from service.admission import Admission
from service.errors import DOMAIN, HubError, Internal, InvalidArgument, ShuttingDown
from service.key_cache import KeyCache
from service.keys import ApiKey, KeyStore
from service.metrics import Metrics

log = structlog.get_logger("aigne.hub")

MAX_MESSAGE_LENGTH = 1000
REST_ERROR_HEADER = "x-hub-error"
REST_STATUS_HEADER = "x-hub-http-status"
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
    key: ApiKey | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    log: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    # What the servicer learned, for the log line and the metrics.
    model: str = ""  # the model asked for, once the registry knows it
    served: str = ""  # the model that served it
    response_format: str = ""
    prompt: str | None = None  # logged only when AIGNE_HUB_LOG_PROMPTS is on
    upstream_seconds: float | None = None
    images: int = 0
    image_bytes: int = 0

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


_current: ContextVar[Call] = ContextVar("aigne_hub_call")


def current_call() -> Call:
    return _current.get()


Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class HubInterceptor(grpc.aio.ServerInterceptor):
    """`public_methods` need no key; `quiet_methods` (probes, health checks) are neither
    logged at INFO nor counted in the request metrics."""

    def __init__(self, keys: KeyStore | KeyCache, *, public_methods: frozenset[str],
                 request_timeout: float, admission: Admission | None = None,
                 metrics: Metrics | None = None, quiet_methods: frozenset[str] = frozenset(),
                 log_prompts: bool = False) -> None:
        self._keys = keys
        self._public = public_methods
        self._timeout = request_timeout
        self._admission = admission or Admission(limit=1 << 30, methods=frozenset())
        self._metrics = metrics or Metrics()
        self._quiet = quiet_methods
        self._log_prompts = log_prompts
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}  # wrapped once per method

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = self._handlers[method] = grpc.unary_unary_rpc_method_handler(
            self._wrap(method, handler.unary_unary),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=answers.serializer(handler.response_serializer),
        )
        return wrapped

    def _wrap(self, method: str, behavior: Behavior) -> Behavior:
        quiet = method in self._quiet

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = self._begin(method, context)
            token = _current.set(call)
            status = "OK"
            admitted = False
            if not quiet:
                self._metrics.started(call)
            try:
                admitted = self._admission.enter(method)
                if method not in self._public:
                    call.key = await self._keys.authenticate(_metadata(context, "authorization"))
                if isinstance(request, Undecodable):
                    raise InvalidArgument(f"The request is not a valid {request.type_name} "
                                          "message (its protobuf encoding is broken).",
                                          reason="INVALID_MESSAGE")
                response = await behavior(request, context)
                await context.send_initial_metadata(
                    (*call.response_headers, ("x-request-id", call.request_id)))
                return response
            except grpc.aio.AbortError:
                status = "ABORTED_BY_HANDLER"
                raise
            except asyncio.CancelledError:
                if not (admitted and self._admission.cutting_off):
                    status = "CANCELLED"
                    raise
                _uncancel()  # cut off at shutdown: say so, rather than a bare cancellation
                status = "SHUTTING_DOWN"
                await _abort(context, call, ShuttingDown(
                    "The server shut down before this request finished; send it again.",
                    retry_after=1))
            except Exception as exc:
                failure = exc if isinstance(exc, HubError) else _unexpected(exc, call)
                status = failure.reason
                await _abort(context, call, failure)
            finally:
                if admitted:
                    self._admission.leave()
                if not quiet:
                    self._metrics.finished(call, status)
                _log_line(call, status, quiet=quiet, prompts=self._log_prompts)
                _current.reset(token)

        return unary

    def _begin(self, method: str, context: grpc.aio.ServicerContext) -> Call:
        loop = asyncio.get_running_loop()
        remaining = context.time_remaining()
        budget = self._timeout if remaining is None else min(remaining, self._timeout)
        given = _metadata(context, "x-request-id")
        return Call(
            request_id=given if given and REQUEST_ID.match(given) else uuid.uuid4().hex,
            method=method.rsplit("/", 1)[-1],
            door="rest" if _metadata(context, "x-hub-door") == "rest" else "grpc",
            deadline=loop.time() + budget,
        )


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
    fields: dict[str, Any] = {
        "request_id": call.request_id, "method": call.method, "door": call.door,
        "key_id": call.key.id if call.key else None, "status": status,
        "duration_ms": round(call.elapsed() * 1000, 1),
    }
    for name in ("model", "served", "response_format"):
        if getattr(call, name):
            fields[name] = getattr(call, name)
    if call.upstream_seconds is not None:
        fields["upstream_ms"] = round(call.upstream_seconds * 1000, 1)
    if call.images:
        fields.update(images=call.images, image_bytes=call.image_bytes)
    if prompts and call.prompt is not None:
        fields["prompt"] = call.prompt
    (log.debug if quiet else log.info)("request", **fields, **call.log)
