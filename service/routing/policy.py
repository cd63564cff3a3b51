"""How the router behaves, as settings (made from Settings by `routing_policy`):
how often it goes round again and how long it waits, the cap on one attempt, and when health
bookkeeping cools a deployment or rests a credential."""

from __future__ import annotations

import random
from dataclasses import dataclass

from service.config import Settings


@dataclass(frozen=True)
class RoutingPolicy:
    retries: int = 2  # rounds over the targets after the first
    base_seconds: float = 0.5  # first backoff between rounds; doubles, with jitter
    max_seconds: float = 8.0
    attempt_timeout: float = 0.0  # cap on one attempt; 0: the request's budget
    failure_threshold: int = 3  # consecutive failures that cool a deployment down
    deployment_cooldown: float = 30.0
    credential_cooldown: float = 30.0  # after a 429 without Retry-After
    refresh_seconds: float = 2.0

    def backoff(self, round_: int) -> float:
        return min(self.base_seconds * 2**round_, self.max_seconds) * random.uniform(0.5, 1.0)


def routing_policy(settings: Settings) -> RoutingPolicy:
    return RoutingPolicy(
        retries=settings.upstream_retries, base_seconds=settings.upstream_retry_base_seconds,
        attempt_timeout=settings.upstream_attempt_timeout_seconds,
        failure_threshold=settings.deployment_failure_threshold,
        deployment_cooldown=settings.deployment_cooldown_seconds,
        credential_cooldown=settings.credential_cooldown_seconds,
        refresh_seconds=settings.routing_refresh_seconds)
