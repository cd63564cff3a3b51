"""The UsageService servicer: usage totals and records over gRPC and REST (`/api/usage`).

A key reads its own usage; an admin key reads any key's, or every key's with `key_id` `-`.
Each `XxxHttp` method is the REST door of `Xxx`: the same answer as JSON the server writes,
where an empty string (a model not chosen) is left out; counts and costs stay, 0 included.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from google.protobuf import timestamp_pb2

from aigne.hub.v1 import usage_service_pb2 as pb
from aigne.hub.v1 import usage_service_pb2_grpc as pb_grpc
from service.accounting.keys import ApiKey
from service.accounting.usage import UsageReports, UsageTotal
from service.contract import json_codec
from service.db import UsageAttemptRow, UsageRecordRow
from service.errors import InvalidArgument, PermissionDenied
from service.rpc.call import current_call

EVERY_KEY = "-"
DEFAULT_DAYS = 30


class UsageServicer(pb_grpc.UsageServiceServicer):
    def __init__(self, reports: UsageReports) -> None:
        self._reports = reports

    async def GetUsage(self, request: pb.GetUsageRequest, context: object) -> pb.GetUsageResponse:
        key_id = scope(current_call().caller, request.key_id)
        end = parse_date("end_date", request.end_date) or datetime.now(UTC).date()
        start = (parse_date("start_date", request.start_date)
                 or end - timedelta(days=DEFAULT_DAYS - 1))
        if start > end:
            raise InvalidArgument("start_date must not be after end_date", param="start_date")
        summary = await self._reports.summary(key_id, start, end, request.model)
        return pb.GetUsageResponse(
            key_id=key_id or EVERY_KEY, start_date=start.isoformat(), end_date=end.isoformat(),
            days=[_total(t) for t in summary.days], models=[_total(t) for t in summary.models],
            total=_total(summary.total))

    async def ListUsageRecords(self, request: pb.ListUsageRecordsRequest,
                               context: object) -> pb.ListUsageRecordsResponse:
        key_id = scope(current_call().caller, request.key_id)
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative", param="page_size")
        records, next_token = await self._reports.records(
            key_id,
            start=request.start_time.ToDatetime(UTC) if request.HasField("start_time") else None,
            end=request.end_time.ToDatetime(UTC) if request.HasField("end_time") else None,
            model=request.model, status=request.status, request_id=request.request_id,
            page_size=request.page_size, page_token=request.page_token)
        attempts = await self._reports.attempts([r.id for r in records])
        return pb.ListUsageRecordsResponse(
            records=[_record(r, attempts.get(r.id, [])) for r in records],
            next_page_token=next_token)

    GetUsageHttp = json_codec.rest_door(GetUsage)
    ListUsageRecordsHttp = json_codec.rest_door(ListUsageRecords)


def scope(caller: ApiKey, asked: str) -> str | None:
    """The key whose usage `caller` may read when asking for `asked` (None: every key)."""
    if asked in ("", caller.id):
        return caller.id
    if not caller.admin:
        raise PermissionDenied("This API key may read only its own usage.", param="key_id",
                               reason="ADMIN_KEY_REQUIRED")
    return None if asked == EVERY_KEY else asked


def parse_date(param: str, text: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"{param} must be a date as YYYY-MM-DD; got '{text[:40]}'",
                              param=param) from None


def _total(total: UsageTotal) -> pb.UsageTotal:
    return pb.UsageTotal(
        date=total.day.isoformat() if total.day else "", model=total.model,
        requests=total.requests, failed_requests=total.failed_requests, images=total.images,
        bytes=total.bytes, cost_usd=total.cost.usd, cost_credits=total.cost.credits)


def _record(row: UsageRecordRow, attempts: list[UsageAttemptRow]) -> pb.UsageRecord:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(row.created_at)
    tokens = None
    if row.input_text_tokens is not None:
        tokens = pb.TokenCounts(
            input_text=row.input_text_tokens, input_image=row.input_image_tokens or 0,
            output_text=row.output_text_tokens or 0, output_image=row.output_image_tokens or 0)
    return pb.UsageRecord(
        request_id=row.request_id, key_id=row.key_id, create_time=created, door=row.door,
        model=row.model, served_model=row.served_model or "", provider=row.provider or "",
        n=row.n, size=row.size or "", quality=row.quality or "",
        response_format=row.response_format or "", status=row.status,
        http_status=row.http_status, images=row.images, bytes=row.bytes,
        upstream_latency_ms=row.upstream_ms, total_latency_ms=row.total_ms, tokens=tokens,
        cost_usd=row.cost_usd_nanos / 1e9, cost_credits=row.cost_credits_nanos / 1e9,
        user=row.user or "", attempts=[_attempt(a) for a in attempts])


def _attempt(row: UsageAttemptRow) -> pb.UsageAttempt:
    ended = timestamp_pb2.Timestamp()
    ended.FromDatetime(row.created_at)
    return pb.UsageAttempt(deployment_id=row.deployment_id,
                           credential_id=row.credential_id or "", outcome=row.outcome,
                           latency_ms=row.upstream_ms, time=ended)
