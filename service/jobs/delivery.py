"""Delivering a job's webhook: one signed POST (service/jobs/webhooks.py) per try, the
backoff between tries, and each key's share of the webhook pool."""

from __future__ import annotations

from collections.abc import Collection
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


class WebhookShares:
    """Who holds the webhook pool (AIGNE_HUB_WEBHOOK_CONCURRENCY deliveries at once): no key
    more than half of it, so a key whose receiver is slow (each delivery may take the whole
    AIGNE_HUB_WEBHOOK_TIMEOUT_SECONDS) leaves room for every other key's webhooks."""

    def __init__(self, size: int, delivering: Collection[str]) -> None:
        self.size = size
        self.share = max(1, size // 2)
        self._delivering = delivering  # the job ids of the deliveries in the pool now
        self._holders: dict[str, str] = {}  # job id -> key id, of the deliveries admitted

    def admit(self, job_id: str, key_id: str) -> bool:
        """Whether the job's delivery may join the pool now: it has room and the key holds
        less than its share. The job's key is remembered if so."""
        self._holders = {j: k for j, k in self._holders.items() if j in self._delivering}
        if len(self._delivering) >= self.size or sum(
                k == key_id for k in self._holders.values()) >= self.share:
            return False
        self._holders[job_id] = key_id
        return True
