"""The one log line per call, written by the interceptor when the call ends: who, what, how
it ended and how long it took. Never a key or image bytes; the prompt only when the operator
asked for it (AIGNE_HUB_LOG_PROMPTS)."""

from __future__ import annotations

from typing import Any

import structlog
from opentelemetry import trace

from service.rpc.call import Call

log = structlog.get_logger("aigne.hub")


def write(call: Call, status: str, *, quiet: bool, prompts: bool) -> None:
    """Log `call`, which ended with `status`: at DEBUG for `quiet` methods (probes, health
    checks), else at INFO; with its prompt if `prompts`."""
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
    span = trace.get_current_span().get_span_context()
    if span.is_valid:  # tracing is on: the line names its trace and the server's span
        fields.update(trace_id=format(span.trace_id, "032x"), span_id=format(span.span_id, "016x"))
    if prompts and charge.prompt is not None:
        fields["prompt"] = charge.prompt
    (log.debug if quiet else log.info)("request", **{**call.log, **fields})
