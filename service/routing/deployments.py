"""Where deployments and their credentials are kept. What they are (the values Deployment
and Credential, which providers are built from) is in service/catalog/deployments.py.

Deployments added through the admin API or the CLI live in the database, their secrets
encrypted (service/routing/secretbox.py); the provider variables of the environment
(OPENAI_API_KEY, GEMINI_API_KEY, ...) still work and make deployments of their own, kept in
memory (`environment_deployments`). Health (cooldowns, disabled credentials, test results)
is written to the database, so every replica sees it; service/routing/health.py decides it.
"""
from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.catalog.deployments import KINDS, Credential, Deployment
from service.config import Settings
from service.db import CredentialRow, Database, DeploymentRow, rows_changed, utcnow
from service.errors import Conflict, InvalidArgument, NotFound
from service.routing.secretbox import SecretBox


def environment_deployments(settings: Settings) -> list[Deployment]:
    """The built-in renderer, and the deployments the environment's provider variables
    describe (OPENAI_API_KEY, GEMINI_API_KEY, AIGNE_HUB_VERTEX_API_KEY or a Vertex project)."""
    found = [Deployment(id="builtin-local", name="local", kind="local", source="builtin",
                        options={"threads": str(settings.image_work_threads),
                                 "max_request_pixels": str(settings.max_request_pixels)})]
    vertex_options = ({} if settings.vertex_api_key or not settings.google_cloud_project else
                      {"project": settings.google_cloud_project,
                       "location": settings.google_cloud_location})
    for kind, key, variable, base_url, options in (
            ("openai", settings.openai_api_key, "OPENAI_API_KEY", settings.openai_base_url, {}),
            ("gemini", settings.gemini_api_key, "GEMINI_API_KEY",
             settings.google_gemini_base_url, {}),
            ("vertex", settings.vertex_api_key, "AIGNE_HUB_VERTEX_API_KEY",
             settings.google_vertex_base_url, vertex_options)):
        secret = key.get_secret_value() if key is not None else ""
        if not secret and not options:
            continue
        credentials = (Credential(id=f"env-{kind}-key", name="from the environment", weight=1,
                                  enabled=True, secret=secret),) if secret else ()
        found.append(Deployment(id=f"env-{kind}", name=f"{kind}-env", kind=kind,
                                base_url=base_url, options=options, source="env",
                                configured_by=variable if secret else "GOOGLE_CLOUD_PROJECT",
                                credentials=credentials))
    return found


class DeploymentStore:
    """Deployments and credentials in the database; secrets sealed with the SecretBox."""

    def __init__(self, database: Database, box: SecretBox) -> None:
        self._db = database
        self._box = box

    async def load(self) -> list[Deployment]:
        async with self._db.read() as session:
            deployments = (await session.scalars(
                select(DeploymentRow).order_by(DeploymentRow.priority, DeploymentRow.name))).all()
            credentials = (await session.scalars(
                select(CredentialRow).order_by(CredentialRow.created_at))).all()
        by_deployment: dict[str, list[Credential]] = {}
        for row in credentials:
            by_deployment.setdefault(row.deployment_id, []).append(self._credential(row))
        return [_deployment(row, tuple(by_deployment.get(row.id, []))) for row in deployments]

    async def get(self, deployment_id: str) -> Deployment:
        for deployment in await self.load():
            if deployment_id in (deployment.id, deployment.name):
                return deployment
        raise NotFound(f"no deployment '{deployment_id}'", param="deployment_id",
                       reason="DEPLOYMENT_NOT_FOUND")

    async def create(self, deployment: Deployment) -> Deployment:
        _check(deployment)
        row = DeploymentRow(
            id="dep_" + secrets.token_hex(8), name=deployment.name, kind=deployment.kind,
            base_url=deployment.base_url, api_version=deployment.api_version,
            options=dict(deployment.options), models=list(deployment.models),
            model_map=dict(deployment.model_map), priority=deployment.priority,
            weight=deployment.weight, enabled=deployment.enabled, created_at=utcnow(),
            consecutive_failures=0)
        try:
            async def add(session: AsyncSession) -> None:
                session.add(row)

            await self._db.write(add)
        except IntegrityError:
            raise Conflict(f"a deployment named '{deployment.name}' exists already",
                           param="name", reason="DEPLOYMENT_EXISTS") from None
        return _deployment(row, ())

    async def update(self, deployment: Deployment) -> Deployment:
        """Replace the settable fields of a stored deployment (not its health)."""
        _check(deployment)
        await self._update_row(deployment.id, name=deployment.name,
                               base_url=deployment.base_url, api_version=deployment.api_version,
                               options=dict(deployment.options), models=list(deployment.models),
                               model_map=dict(deployment.model_map),
                               priority=deployment.priority, weight=deployment.weight,
                               enabled=deployment.enabled)
        return await self.get(deployment.id)

    async def delete(self, deployment_id: str) -> None:
        async def remove(session: AsyncSession) -> int:
            await session.execute(delete(CredentialRow)
                                  .where(CredentialRow.deployment_id == deployment_id))
            done = await session.execute(delete(DeploymentRow)
                                         .where(DeploymentRow.id == deployment_id))
            return rows_changed(done)

        done = await self._db.write(remove)
        if not done:
            raise NotFound(f"no deployment '{deployment_id}'", param="deployment_id",
                           reason="DEPLOYMENT_NOT_FOUND")

    async def add_credential(self, deployment_id: str, name: str, secret: str, *,
                             weight: int = 1, enabled: bool = True) -> Credential:
        if not secret.strip():
            raise InvalidArgument("secret is required", param="secret",
                                  reason="MISSING_REQUIRED_PARAMETER")
        if weight < 1:
            raise InvalidArgument("weight must be at least 1", param="weight")
        deployment = await self.get(deployment_id)
        row = CredentialRow(id="cred_" + secrets.token_hex(8), deployment_id=deployment.id,
                            name=name or "credential", secret=self._box.seal(secret.strip()),
                            weight=weight, enabled=enabled, created_at=utcnow())

        async def add(session: AsyncSession) -> None:
            session.add(row)

        await self._db.write(add)
        return replace(self._credential(row), secret="")

    async def update_credential(self, credential_id: str, *, weight: int, enabled: bool
                                ) -> Credential:
        """Set weight and enabled; enabling clears the reason it was disabled and its rest."""
        if weight < 1:
            raise InvalidArgument("weight must be at least 1", param="weight")
        values: dict[str, object] = {"weight": weight, "enabled": enabled}
        if enabled:
            values |= {"disabled_reason": None, "disabled_at": None, "cooldown_until": None}

        async def change(session: AsyncSession) -> tuple[int, CredentialRow | None]:
            done = await session.execute(update(CredentialRow)
                                         .where(CredentialRow.id == credential_id).values(**values))
            return rows_changed(done), await session.get(CredentialRow, credential_id)

        done, row = await self._db.write(change)
        if not done or row is None:
            raise NotFound(f"no credential '{credential_id}'", param="credential_id",
                           reason="CREDENTIAL_NOT_FOUND")
        return replace(self._credential(row), secret="")

    async def delete_credential(self, credential_id: str) -> None:
        async def remove(session: AsyncSession) -> int:
            done = await session.execute(delete(CredentialRow)
                                         .where(CredentialRow.id == credential_id))
            return rows_changed(done)

        done = await self._db.write(remove)
        if not done:
            raise NotFound(f"no credential '{credential_id}'", param="credential_id",
                           reason="CREDENTIAL_NOT_FOUND")

    # Health, written as it happens so that every replica sees it.
    async def disable_credential(self, credential_id: str, reason: str) -> None:
        async def disable(session: AsyncSession) -> None:
            await session.execute(update(CredentialRow).where(CredentialRow.id == credential_id)
                                  .values(enabled=False, disabled_reason=reason[:300],
                                          disabled_at=utcnow()))

        await self._db.write(disable)

    async def rest_credential(self, credential_id: str, until: datetime) -> None:
        async def rest(session: AsyncSession) -> None:
            await session.execute(update(CredentialRow).where(CredentialRow.id == credential_id)
                                  .values(cooldown_until=until))

        await self._db.write(rest)

    async def record_outcome(self, deployment_id: str, *, failures: int,
                             cooldown_until: datetime | None, error: str | None) -> None:
        await self._update_row(deployment_id, consecutive_failures=failures,
                               cooldown_until=cooldown_until,
                               last_error=error[:300] if error else error)

    async def record_test(self, deployment_id: str, status: str, milliseconds: float) -> None:
        await self._update_row(deployment_id, last_test_status=status[:64],
                               last_test_ms=round(milliseconds, 1), last_test_at=utcnow())

    async def reseal(self) -> int:
        """Encrypt every stored secret again with the first credentials key."""

        async def reseal_all(session: AsyncSession) -> int:
            rows = (await session.scalars(select(CredentialRow))).all()
            for row in rows:
                row.secret = self._box.reseal(row.secret)
            return len(rows)

        return await self._db.write(reseal_all)

    async def _update_row(self, deployment_id: str, **values: object) -> None:
        try:
            async def change(session: AsyncSession) -> int:
                done = await session.execute(update(DeploymentRow)
                                             .where(DeploymentRow.id == deployment_id)
                                             .values(**values))
                return rows_changed(done)

            done = await self._db.write(change)
        except IntegrityError:
            raise Conflict("a deployment with that name exists already", param="name",
                           reason="DEPLOYMENT_EXISTS") from None
        if not done:
            raise NotFound(f"no deployment '{deployment_id}'", param="deployment_id",
                           reason="DEPLOYMENT_NOT_FOUND")

    def _credential(self, row: CredentialRow) -> Credential:
        return Credential(id=row.id, name=row.name, weight=row.weight, enabled=row.enabled,
                          secret=self._box.open(row.secret), disabled_reason=row.disabled_reason,
                          disabled_at=row.disabled_at, cooldown_until=row.cooldown_until,
                          created_at=row.created_at)


def _deployment(row: DeploymentRow, credentials: tuple[Credential, ...]) -> Deployment:
    return Deployment(
        id=row.id, name=row.name, kind=row.kind, base_url=row.base_url,
        api_version=row.api_version, options=dict(row.options or {}),
        models=tuple(row.models or ()), model_map=dict(row.model_map or {}),
        priority=row.priority, weight=row.weight, enabled=row.enabled, source="api",
        credentials=credentials, cooldown_until=row.cooldown_until,
        consecutive_failures=row.consecutive_failures, last_error=row.last_error,
        last_test_status=row.last_test_status, last_test_ms=row.last_test_ms,
        last_test_at=row.last_test_at)


def _check(deployment: Deployment) -> None:
    if deployment.kind not in KINDS or deployment.kind == "local":
        raise InvalidArgument(f"kind must be one of openai, azure, gemini, vertex; got "
                              f"'{deployment.kind}'", param="kind")
    if not deployment.name.strip() or "/" in deployment.name:
        raise InvalidArgument("name is required and must not contain '/'", param="name")
    if deployment.kind == "azure" and not (deployment.base_url and deployment.api_version):
        raise InvalidArgument("an Azure deployment needs base_url (its endpoint) and "
                              "api_version", param="base_url" if not deployment.base_url
                              else "api_version")
    if deployment.weight < 1:
        raise InvalidArgument("weight must be at least 1", param="weight")


def cooldown(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)
