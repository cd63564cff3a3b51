"""How an error reaches the client: a HubError becomes a google.rpc.Status (ErrorInfo,
BadRequest, RetryInfo, RequestInfo) sent in the trailers of an aborted call. For calls that
came through the REST door (Envoy marks them `x-hub-door: rest`) the trailers also carry the
OpenAI-shaped JSON body and the HTTP status, which Envoy's Lua filter puts on the wire, so
both doors say the same thing.

An exception that is not a HubError becomes one here too (`unexpected`): a database outage
the caller should hear about, or INTERNAL, with the details in the log.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service import db
from service.errors import DOMAIN, HubError, Internal
from service.rpc.call import Call

log = structlog.get_logger("aigne.hub")

MAX_MESSAGE_LENGTH = 1000
REST_ERROR_HEADER = "x-hub-error"
REST_STATUS_HEADER = "x-hub-http-status"


async def abort(context: grpc.aio.ServicerContext, call: Call, error: HubError) -> None:
    """End the call with `error`'s status (and, at the REST door, its body and HTTP
    status); raises grpc.aio.AbortError, as `context.abort` does."""
    message = clip(error.message)
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


def clip(message: str) -> str:
    """`message`, cut to MAX_MESSAGE_LENGTH characters."""
    return message if len(message) <= MAX_MESSAGE_LENGTH else message[:MAX_MESSAGE_LENGTH] + "…"


def unexpected(exc: Exception, call: Call) -> HubError:
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
