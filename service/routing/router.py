"""Which deployment and credential serve an upstream call, what happens when one fails,
and how their health is kept.

For a model the router lists the healthy deployments serving it, by priority, and within a
priority in a weighted random order; for each, a credential drawn by weight among its usable
ones. `Router.generate` tries them in turn: on failures that are the upstream's (5xx,
broken connection, garbage, a 429, our credentials refused, a model it does not serve, an
attempt over its time cap) it moves on to the next; on failures the request caused (a bad
size, a content refusal) it stops at once. When every target failed it waits a backoff and
goes round again while retries and the request's budget last. This is the only layer that
retries.

Each outcome goes to the health bookkeeping (health.py beside this module: credentials
disabled or rested, deployments cooled down), and each attempt is kept for the usage record.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from opentelemetry import trace

from service.catalog.deployments import NEEDS_SECRET, Credential, Deployment
from service.catalog.models import ModelSpec
from service.errors import (
    HubError,
    NotFound,
    ProviderNotConfigured,
    ResourceExhausted,
    Unavailable,
)
from service.providers import BUILDERS, SETUP_HINTS
from service.providers.base import Generation, ImageJob, Provider, ProviderDeps
from service.routing.deployments import DeploymentStore
from service.routing.health import DeploymentHealth
from service.routing.policy import RoutingPolicy

# Failures that say nothing against the request: another deployment may well succeed.
MOVE_ON = {"UPSTREAM_RATE_LIMITED", "UPSTREAM_AUTH_FAILED", "UPSTREAM_MODEL_NOT_FOUND",
           "ATTEMPT_TIMEOUT"}

# A proxy until the SDK is set up (ops/tracing), the API's no-op tracer when it never is.
_tracer = trace.get_tracer("aigne.hub")
GENAI_OPERATION = "generate_content"  # OpenTelemetry GenAI's name for a model making output


@dataclass(frozen=True)
class Target:
    deployment: Deployment
    credential: Credential | None
    provider: Provider


@dataclass(frozen=True)
class Attempt:
    """One upstream call of a request, for its usage record."""

    deployment_id: str
    credential_id: str | None
    outcome: str  # OK, or the error reason
    seconds: float
    at: datetime


class Router:
    def __init__(self, store: DeploymentStore | None, builtin: list[Deployment],
                 policy: RoutingPolicy, deps: ProviderDeps,
                 instrument: Callable[[Provider, Deployment], Provider] | None = None) -> None:
        self._policy = policy
        self._deps = deps  # lent to every provider; its secrets kept current here
        deps.secrets.update(_secrets_of(builtin))
        self._instrument = instrument  # e.g. metrics around every upstream call
        self._health = DeploymentHealth(store, builtin, policy)
        self._providers: dict[tuple[str, str | None], tuple[tuple[object, ...], Provider]] = {}

    async def deployments(self) -> list[Deployment]:
        """Every deployment, with its health as this process last read or saw it. Their
        credentials join the secrets providers mask in what upstreams say."""
        deployments = await self._health.deployments()
        self._deps.secrets.update(_secrets_of(deployments))
        return deployments

    def forget_snapshot(self) -> None:
        """Re-read stored deployments on next use (after an admin change)."""
        self._health.forget_snapshot()

    def set_builtin_credential(self, credential_id: str, *, weight: int, enabled: bool
                               ) -> Credential | None:
        """Set a credential of the environment's deployments (kept in memory); enabling
        clears why it was disabled and its rest. None when no such credential."""
        return self._health.set_builtin_credential(credential_id, weight=weight, enabled=enabled)

    async def is_configured(self, provider: str) -> bool:
        return any(d.provider == provider and d.enabled for d in await self.deployments())

    async def targets(self, spec: ModelSpec, pin: str | None = None) -> list[Target]:
        """The attempts to make for `spec`, in order: healthy deployments by priority and
        weight, then those cooling down, soonest back first (a last resort beats none).
        Raises when nothing can serve it."""
        now = datetime.now(UTC)
        serving = [d for d in await self.deployments() if d.serves(spec) and d.enabled
                   and (pin is None or pin in (d.name, d.kind))]
        if not serving:
            raise self._nothing_serves(spec, pin)
        healthy = [d for d in serving if d.state(now) == "healthy"]
        cooling = sorted((d for d in serving if d.state(now) == "cooling"),
                         key=lambda d: d.cooldown_until or now)
        targets = []
        for deployment in [*_weighted_order(healthy), *cooling]:
            credential = _draw_credential(deployment, now)
            if credential is None and deployment.kind in NEEDS_SECRET:
                continue
            targets.append(Target(deployment, credential, self._provider(deployment, credential)))
        if not targets:
            raise _no_target(spec, serving, now)
        return targets

    async def generate(self, job: ImageJob, attempts: list[Attempt],
                       pin: str | None = None) -> Generation:
        """`job` from the first target that can make it (see the module docstring)."""
        loop = asyncio.get_running_loop()
        last: HubError | None = None
        for round_ in range(self._policy.retries + 1):
            if last is not None and not last.retryable:
                break  # a rate limit, refused credentials, a model not served: not again
            if round_:
                delay = self._policy.backoff(round_ - 1)
                if job.deadline is not None and loop.time() + delay >= job.deadline:
                    break
                await asyncio.sleep(delay)
            try:
                targets = await self.targets(job.model, pin)
            except HubError:
                if last is None:
                    raise
                break  # the upstream's own failure says more than "nothing left to try"
            for target in targets:
                try:
                    return await self._attempt(target, job, attempts, round_)
                except HubError as error:
                    last = error
                    if not (error.retryable or error.reason in MOVE_ON):
                        raise
        assert last is not None
        raise last

    async def _attempt(self, target: Target, job: ImageJob, attempts: list[Attempt],
                       round_: int = 0) -> Generation:
        """One upstream call, in a span of its own (deployment, model, outcome, retry
        round); the SDK's HTTP call is its child and carries `traceparent` upstream."""
        started = time.monotonic()
        cap = self._policy.attempt_timeout
        capped = cap > 0 and (job.deadline is None or started + cap < job.deadline)
        with _tracer.start_as_current_span(
                f"{GENAI_OPERATION} {job.model.upstream}",
                attributes=_attempt_attributes(target, job, round_)) as span:
            try:  # the provider turns the job's deadline into its SDK timeout; a backstop
                async with asyncio.timeout(cap + 1 if capped else None):
                    generation = await target.provider.generate(
                        replace(job, deadline=started + cap) if capped else job)
            except (TimeoutError, HubError) as exc:
                error = exc if isinstance(exc, HubError) else None
                if error is None or (capped and error.reason == "TIMEOUT"):
                    error = Unavailable(f"The deployment '{target.deployment.name}' did not "
                                        f"answer within {cap:g} s.", reason="ATTEMPT_TIMEOUT")
                attempts.append(_attempt(target, error.reason, started))
                span.set_attributes({"error.type": error.reason,
                                     "aigne.hub.upstream.outcome": error.reason})
                span.set_status(trace.StatusCode.ERROR, error.reason)
                await self._health.failed(target.deployment, target.credential, error)
                raise error from None
            attempts.append(_attempt(target, "OK", started))
            span.set_attribute("aigne.hub.upstream.outcome", "OK")
        await self._health.succeeded(target.deployment)
        return generation

    def _provider(self, deployment: Deployment, credential: Credential | None) -> Provider:
        """One SDK client per deployment and credential, made once and kept while they last."""
        secret = credential.secret if credential else ""
        fingerprint = (deployment.kind, deployment.base_url, deployment.api_version,
                       tuple(sorted(deployment.options.items())),
                       tuple(sorted(deployment.model_map.items())), secret)
        key = (deployment.id, credential.id if credential else None)
        cached = self._providers.get(key)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        if cached is not None:
            asyncio.get_running_loop().create_task(cached[1].aclose())
        provider = BUILDERS[deployment.kind](deployment, secret, self._deps)
        if self._instrument is not None:
            provider = self._instrument(provider, deployment)
        self._providers[key] = (fingerprint, provider)
        return provider

    async def test(self, deployment: Deployment, job: ImageJob) -> tuple[str, str, float]:
        """Run `job` on `deployment` alone (no fallback, no retry); keep and answer the
        outcome: (status, message, milliseconds)."""
        started = time.monotonic()
        credential = _draw_credential(deployment, datetime.now(UTC))
        status, message = "OK", ""
        if credential is None and deployment.kind in NEEDS_SECRET:
            status, message = "NO_USABLE_CREDENTIAL", "no enabled credential to test with"
        else:
            try:
                await self._provider(deployment, credential).generate(job)
            except HubError as error:
                status, message = error.reason, error.message
        milliseconds = (time.monotonic() - started) * 1000
        await self._health.tested(deployment, status, milliseconds)
        return status, message, milliseconds

    def _nothing_serves(self, spec: ModelSpec, pin: str | None) -> HubError:
        if pin is not None:
            return NotFound(f"No deployment '{pin}' serves the model '{spec.name}'.",
                            param="model", reason="DEPLOYMENT_NOT_FOUND")
        hint = SETUP_HINTS.get(spec.provider, "add a deployment for it")
        return ProviderNotConfigured(
            f"The model '{spec.name}' is served by the {spec.provider} provider, which is not "
            f"configured on this server: {hint}.", param="model")

    async def aclose(self) -> None:
        for _, provider in self._providers.values():
            await provider.aclose()


def _secrets_of(deployments: Iterable[Deployment]) -> list[str]:
    return [c.secret for d in deployments for c in d.credentials if c.secret]


def _weighted_order(deployments: Iterable[Deployment]) -> list[Deployment]:
    """By priority (low first); within a priority, a random order drawn by weight."""
    return sorted(deployments,
                  key=lambda d: (d.priority, -random.random() ** (1.0 / max(1, d.weight))))


def _draw_credential(deployment: Deployment, now: datetime) -> Credential | None:
    usable = deployment.usable_credentials(now)
    if not usable:
        return None
    return random.choices(usable, weights=[c.weight for c in usable])[0]


def _no_target(spec: ModelSpec, serving: list[Deployment], now: datetime) -> HubError:
    """Why nothing can take a call for `spec` now: its credentials rest after the upstream's
    rate limits (429, until the first is back), or none is enabled (503)."""
    resting = [c.cooldown_until for d in serving if d.enabled for c in d.credentials
               if c.state(now) == "cooling" and c.cooldown_until]
    if resting:
        return ResourceExhausted(
            f"The upstream is rate limiting every credential that serves '{spec.name}'; "
            "try again after the Retry-After time.", reason="UPSTREAM_RATE_LIMITED",
            retry_after=max(1.0, (min(resting) - now).total_seconds()))
    return Unavailable(f"No enabled deployment with a usable credential serves '{spec.name}'; "
                       "an operator must enable one.", reason="NO_USABLE_DEPLOYMENT")


def _attempt_attributes(target: Target, job: ImageJob, round_: int) -> dict[str, str | int]:
    """An attempt's span attributes: OpenTelemetry's GenAI conventions where they fit,
    ours (`aigne.hub.*`) for the routing; never a prompt, a key or an image."""
    return {"gen_ai.operation.name": GENAI_OPERATION,
            "gen_ai.provider.name": target.deployment.kind,
            "gen_ai.request.model": job.model.upstream,
            "aigne.hub.model": job.model.name,
            "aigne.hub.deployment": target.deployment.name,
            "aigne.hub.retry": round_, "aigne.hub.images": job.n}


def _attempt(target: Target, outcome: str, started: float) -> Attempt:
    return Attempt(deployment_id=target.deployment.id,
                   credential_id=target.credential.id if target.credential else None,
                   outcome=outcome, seconds=time.monotonic() - started, at=datetime.now(UTC))
