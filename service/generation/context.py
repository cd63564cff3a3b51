"""What the generation pipeline knows of the request it serves, whichever door it came by.

A gRPC call (service/rpc/call.py) is one; a job's run (service/jobs/) makes its own. Both
carry the request's `Charge` (its key, id, door and arrival, and what it is charged), its
time budget, its idempotency key, and where the pipeline leaves response headers and log
fields.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from service.accounting.charge import Charge
from service.accounting.keys import ApiKey
from service.errors import Unauthenticated


@dataclass(kw_only=True)
class RequestContext:
    charge: Charge
    deadline: float  # loop time by which the answer must be sent
    idempotency_key: str | None = None  # the `idempotency-key` the client sent, if any
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    log: dict[str, Any] = field(default_factory=dict)
    # Work that goes on when the client goes away (an idempotent request's generation, kept
    # for its retries): the call is recorded when the work ends, not when the client left.
    detached: asyncio.Task[Any] | None = None

    @property
    def request_id(self) -> str:
        return self.charge.request_id

    @property
    def door(self) -> str:
        return self.charge.door

    @property
    def accepted_at(self) -> float:
        return self.charge.accepted_at

    @property
    def key(self) -> ApiKey | None:
        return self.charge.key

    @key.setter
    def key(self, key: ApiKey | None) -> None:
        self.charge.authenticated(key)

    @property
    def caller(self) -> ApiKey:
        """The caller's key; only public methods run without one."""
        if self.key is None:
            raise Unauthenticated("This method needs an API key.", reason="MISSING_API_KEY")
        return self.key

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()
