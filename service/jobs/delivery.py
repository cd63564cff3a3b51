"""Delivering a job's webhook: one signed POST (service/jobs/webhooks.py) per try, and the
backoff between tries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import structlog

from aigne.hub.v1 import job_service_pb2 as job_pb
from service.contract import json_codec
from service.db import JobRow, utcnow
from service.jobs.queue import DELIVERED, FAILED
from service.jobs.webhooks import Webhooks

log = structlog.get_logger("aigne.hub")

MAX_WEBHOOK_DELAY_SECONDS = 3600.0


class Delivery:
    def __init__(self, webhooks: Webhooks, *, retries: int, base_seconds: float) -> None:
        self._webhooks = webhooks
        self._retries = retries
        self._base = base_seconds

    async def deliver(self, row: JobRow, job: job_pb.Job) -> dict[str, Any]:
        """Post `job` to its webhook once; what to write down of it (the next try's time,
        with the base delay doubling up to an hour, or its end)."""
        body = orjson.dumps({"type": f"image.job.{row.status}",
                             "timestamp": utcnow().isoformat().replace("+00:00", "Z"),
                             "data": {"job": json_codec.to_json_value(job)}})
        failure = await self._webhooks.deliver(row.webhook_url or "", row.key_id,
                                               f"msg_{row.id}", body)
        attempts = row.webhook_attempts + 1
        values: dict[str, Any] = {"webhook_attempts": attempts, "webhook_error": failure}
        if failure is None:
            values["webhook_status"] = DELIVERED
        elif attempts > self._retries:
            values["webhook_status"] = FAILED
        else:
            delay = min(self._base * 2 ** (attempts - 1), MAX_WEBHOOK_DELAY_SECONDS)
            values["webhook_next_at"] = utcnow() + timedelta(seconds=delay)
        log.info("webhook", job_id=row.id, attempt=attempts, delivered=failure is None,
                 error=failure)
        return values
