"""A model's lifecycle, told to its callers: the model that served, and the deprecation and
sunset of a retired or retiring one (RFC 9745, RFC 8594), with one warning in the log per
key and model."""

from __future__ import annotations

from datetime import UTC, date, datetime
from email.utils import format_datetime

import structlog

from service.accounting.keys import ApiKey
from service.catalog.models import Lifecycle, Route

log = structlog.get_logger("aigne.hub")


class Lifecycles:
    def __init__(self) -> None:
        self._warned: set[tuple[str, str]] = set()

    def headers(self, route: Route, key: ApiKey | None) -> list[tuple[str, str]]:
        """The response headers a request for `route` gets."""
        headers = [("x-model-served", route.served.name)]
        spec = route.requested
        if route.lifecycle is Lifecycle.ACTIVE:
            return headers
        if spec.deprecated_on:
            headers.append(("deprecation", f"@{_epoch(spec.deprecated_on)}"))
        if spec.shutdown_on:
            headers.append(("sunset", _http_date(spec.shutdown_on)))
        key_id = key.id if key else ""
        if route.lifecycle is Lifecycle.DEPRECATED and (key_id, spec.name) not in self._warned:
            self._warned.add((key_id, spec.name))
            log.warning("deprecated model", model=spec.name, key_id=key_id,
                        shutdown_on=str(spec.shutdown_on), successor=spec.successor)
        return headers


def _epoch(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _http_date(day: date) -> str:
    return format_datetime(datetime(day.year, day.month, day.day, tzinfo=UTC), usegmt=True)
