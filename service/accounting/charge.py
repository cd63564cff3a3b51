"""Charging one request: reserve → meter → settle and record, one object.

A `Charge` is opened when a call arrives (its request id, door and arrival) and learns its
API key once the key is checked. The generation tells it what was asked (`asked`), the
checked plan (`planned`), reserves the images in the key's quota windows (`reserve`), and
what the provider made and the client got (`generated`, `returned`; the router adds each
upstream attempt). When the call ends, `settle` gives back the images not returned and
writes the usage record, in one transaction (service/accounting/usage.py), whatever the
outcome; a job settles in the transaction that ends it (`settle_in`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from opentelemetry import trace
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from service.accounting.keys import ApiKey
from service.accounting.quotas import Quotas, Reservation
from service.catalog.models import ModelSpec, Route, Size
from service.providers.base import GeneratedImage, Generation
from service.routing.router import Attempt

_tracer = trace.get_tracer("aigne.hub")  # the no-op API's until ops/tracing sets the SDK up


class Ledger(Protocol):
    """Where settled charges are written (UsageRecorder)."""

    async def finish(self, charge: Charge, status: str, http_status: int) -> None: ...

    def record(self, connection: Connection, charge: Charge, status: str,
               http_status: int, ended_at: float | None = None) -> None: ...


@dataclass(frozen=True)
class Billed:
    """What the price is looked up by: the model that served, in its own size and quality."""

    route: Route
    quality: str | None
    size: str | None

    @property
    def served(self) -> ModelSpec:
        return self.route.served


@dataclass
class Charge:
    """What one request asked for and used, and what it is charged."""

    request_id: str
    door: str  # grpc or rest
    accepted_at: float  # UNIX time
    quotas: Quotas | None = field(default=None, repr=False)
    ledger: Ledger | None = field(default=None, repr=False)
    key: ApiKey | None = None
    key_id: str = ""  # the key's id (a job's, even when its key is gone)
    model: str = ""
    n: int = 1
    size: str | None = None
    quality: str | None = None
    response_format: str | None = None
    user: str | None = None
    prompt: str | None = None  # for the log line, when the operator asks for prompts
    route: Route | None = None  # the registry's models, once the name is known
    billed: Billed | None = None
    reservation: Reservation | None = None
    generation: Generation | None = None
    attempts: list[Attempt] = field(default_factory=list)  # upstream calls, by the router
    images: int = 0  # handed to the client: what the request is charged for
    bytes: int = 0
    # False: nothing to record for this call (a replay of an answer already recorded, or
    # a job, which records its usage when it ends).
    record: bool = True
    settled: bool = False

    def __post_init__(self) -> None:
        if self.key is not None and not self.key_id:
            self.key_id = self.key.id

    def authenticated(self, key: ApiKey | None) -> None:
        """The caller's key, once checked."""
        self.key = key
        self.key_id = key.id if key is not None else ""

    def asked(self, model: str, *, n: int | None, size: str, quality: str,
              response_format: str, user: str, prompt: str) -> None:
        """The request as it came (it may still fail validation)."""
        self.model = model
        self.n = n if n is not None else 1
        self.size = size or None
        self.quality = quality or None
        self.response_format = response_format or None
        self.user = user or None
        self.prompt = prompt

    def planned(self, route: Route, *, n: int, size: Size | None, response_format: str,
                served_quality: str | None, served_size: Size | None) -> None:
        """The checked request, with the defaults of the model it named; the price is
        looked up by the serving model's own size and quality."""
        self.route = route
        self.n = n
        self.size = str(size) if size else "auto"
        self.quality = self.quality or route.requested.default_quality
        self.response_format = response_format
        self.billed = Billed(route, served_quality, str(served_size) if served_size else None)

    async def reserve(self, images: int, *, tracked: bool = True) -> Reservation:
        """Reserve `images` in the key's quota windows (429 naming a full one); `tracked`
        False for a job's, which its job row keeps (Quotas.reserve)."""
        assert self.quotas is not None and self.key is not None
        with _tracer.start_as_current_span("quota reserve",
                                           attributes={"aigne.hub.images": images}):
            self.reservation = await self.quotas.reserve(self.key, images, tracked=tracked)
        return self.reservation

    def generated(self, generation: Generation) -> None:
        """Its usage and time, kept for the record; not its images (a charge lives until
        the answer is sent, which must not keep tens of megabytes of them alive)."""
        self.generation = replace(generation, images=[])

    def returned(self, images: Iterable[GeneratedImage]) -> None:
        images = list(images)
        self.images = len(images)
        self.bytes = sum(len(image.data) for image in images)

    def sent(self, images: int, size: int) -> None:
        """What a stream sent before it failed: what it is charged."""
        self.images, self.bytes = images, size

    async def settle(self, status: str, http_status: int) -> None:
        """Give back what was not returned and write the record (once; not for a call
        that records nothing, or that has no key)."""
        if self.settled or not self.record or self.key is None or self.ledger is None:
            return
        self.settled = True
        with _tracer.start_as_current_span("usage record",
                                           attributes={"aigne.hub.status": status}):
            await self.ledger.finish(self, status, http_status)

    async def settle_in(self, session: AsyncSession, status: str, http_status: int) -> None:
        """`settle`, in the caller's transaction (a job's ending)."""
        ledger = self.ledger
        assert ledger is not None
        self.settled = True
        await session.run_sync(
            lambda sync: ledger.record(sync.connection(), self, status, http_status))
