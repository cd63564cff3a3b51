"""The deployments as this process knows them, and their health as it happens.

A snapshot of every deployment: the built-in and the environment's ones live in memory, the
stored ones are re-read from the DeploymentStore when the snapshot is older than the policy's
refresh time (so health set by another replica shows up). Each outcome patches the snapshot
at once and, for a stored deployment, is written to the database for every replica:
a credential refused with 401/403 is disabled (reason and time kept) until an admin enables
it again; a 429 rests the credential for its Retry-After (or a default); repeated failures of
a deployment put it in cooldown, and a success ends that. Test results are kept the same way.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime

import structlog

from service.catalog.deployments import Credential, Deployment
from service.errors import HubError
from service.routing.deployments import DeploymentStore, cooldown
from service.routing.policy import RoutingPolicy

log = structlog.get_logger("aigne.hub")


class DeploymentHealth:
    def __init__(self, store: DeploymentStore | None, builtin: list[Deployment],
                 policy: RoutingPolicy) -> None:
        self._store = store
        self._policy = policy
        self._builtin = {d.id: d for d in builtin}  # local and the environment's: in memory
        self._stored: dict[str, Deployment] = {}
        self._loaded_at = -1e9
        self._lock = asyncio.Lock()

    async def deployments(self) -> list[Deployment]:
        """Every deployment, stored ones re-read when the snapshot is older than the policy's
        refresh time."""
        if self._store is not None and (
                time.monotonic() - self._loaded_at >= self._policy.refresh_seconds):
            async with self._lock:
                if time.monotonic() - self._loaded_at >= self._policy.refresh_seconds:
                    self._stored = {d.id: d for d in await self._store.load()}
                    self._loaded_at = time.monotonic()
        return [*self._builtin.values(), *self._stored.values()]

    def forget_snapshot(self) -> None:
        """Re-read stored deployments on next use (after an admin change)."""
        self._loaded_at = -1e9

    def set_builtin_credential(self, credential_id: str, *, weight: int, enabled: bool
                               ) -> Credential | None:
        """Set a credential of the environment's deployments (kept in memory); enabling
        clears why it was disabled and its rest. None when no such credential."""
        for deployment in self._builtin.values():
            for credential in deployment.credentials:
                if credential.id == credential_id:
                    updated = replace(credential, weight=weight, enabled=enabled)
                    if enabled:
                        updated = replace(updated, disabled_reason=None, disabled_at=None,
                                          cooldown_until=None)
                    self._patch_credential(deployment, updated)
                    return updated
        return None

    async def failed(self, deployment: Deployment, credential: Credential | None,
                     error: HubError) -> None:
        """An attempt on `deployment` with `credential` failed with `error`."""
        log.info("upstream attempt failed", deployment=deployment.name, reason=error.reason,
                 credential_id=credential.id if credential else None)
        if error.reason == "UPSTREAM_AUTH_FAILED" and credential is not None:
            await self._disable(deployment, credential, f"{error.reason}: {error.message}")
        elif error.reason == "UPSTREAM_RATE_LIMITED" and credential is not None:
            await self._rest(deployment, credential,
                             error.retry_after or self._policy.credential_cooldown)
        elif error.retryable or error.reason == "ATTEMPT_TIMEOUT":
            failures = self._current(deployment).consecutive_failures + 1
            until = (cooldown(self._policy.deployment_cooldown)
                     if failures >= self._policy.failure_threshold else None)
            if until is not None:
                log.warning("deployment cooling down", deployment=deployment.name,
                            failures=failures, until=until.isoformat(), reason=error.reason)
            await self._set_health(deployment, failures=failures, until=until,
                                   error=f"{error.reason}: {error.message}")

    async def succeeded(self, deployment: Deployment) -> None:
        """An attempt on `deployment` succeeded: its failures and cooldown end."""
        if deployment.consecutive_failures or deployment.cooldown_until:
            await self._set_health(deployment, failures=0, until=None, error=None)

    async def tested(self, deployment: Deployment, status: str, milliseconds: float) -> None:
        """Keep the outcome of an admin's test of `deployment`."""
        self._put(replace(self._current(deployment), last_test_status=status,
                          last_test_ms=milliseconds, last_test_at=datetime.now(UTC)))
        if deployment.source == "api" and self._store is not None:
            await self._store.record_test(deployment.id, status, milliseconds)

    async def _disable(self, deployment: Deployment, credential: Credential, reason: str) -> None:
        log.warning("credential disabled", deployment=deployment.name,
                    credential_id=credential.id, reason=reason)
        now = datetime.now(UTC)
        self._patch_credential(deployment, replace(credential, enabled=False,
                                                   disabled_reason=reason, disabled_at=now))
        if deployment.source == "api" and self._store is not None:
            await self._store.disable_credential(credential.id, reason)

    async def _rest(self, deployment: Deployment, credential: Credential, seconds: float) -> None:
        until = cooldown(seconds)
        log.info("credential resting", deployment=deployment.name, credential_id=credential.id,
                 until=until.isoformat())
        self._patch_credential(deployment, replace(credential, cooldown_until=until))
        if deployment.source == "api" and self._store is not None:
            await self._store.rest_credential(credential.id, until)

    async def _set_health(self, deployment: Deployment, *, failures: int,
                          until: datetime | None, error: str | None) -> None:
        current = self._current(deployment)
        self._put(replace(current, consecutive_failures=failures, cooldown_until=until,
                          last_error=error or current.last_error))
        if deployment.source == "api" and self._store is not None:
            await self._store.record_outcome(deployment.id, failures=failures,
                                             cooldown_until=until, error=error)

    def _patch_credential(self, deployment: Deployment, credential: Credential) -> None:
        current = self._current(deployment)
        self._put(replace(current, credentials=tuple(
            credential if c.id == credential.id else c for c in current.credentials)))

    def _current(self, deployment: Deployment) -> Deployment:
        return self._builtin.get(deployment.id) or self._stored.get(deployment.id) or deployment

    def _put(self, deployment: Deployment) -> None:
        table = self._builtin if deployment.id in self._builtin else self._stored
        table[deployment.id] = deployment
