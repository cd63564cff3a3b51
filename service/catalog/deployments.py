"""Deployments and their credentials as values: what an upstream is, with no database.

A deployment is one upstream that serves models: OpenAI itself or any OpenAI-compatible
base URL (`openai`), Azure OpenAI (`azure`), the Gemini API (`gemini`), Vertex AI
(`vertex`), or the built-in renderer (`local`). Providers are built from these values;
routing/deployments.py keeps them in the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from service.catalog.models import ModelSpec

# Deployment kind → the registry's provider name (models.toml `provider = ...`) it serves.
KINDS = {"openai": "openai", "azure": "openai", "gemini": "google", "vertex": "vertex",
         "local": "local"}
NEEDS_SECRET = {"openai", "azure", "gemini"}


@dataclass(frozen=True)
class Credential:
    """A secret of a deployment. `secret` exists only in memory, decrypted."""

    id: str
    name: str
    weight: int
    enabled: bool
    secret: str = field(repr=False, default="")
    disabled_reason: str | None = None
    disabled_at: datetime | None = None
    cooldown_until: datetime | None = None
    created_at: datetime | None = None

    def state(self, now: datetime) -> str:
        if not self.enabled:
            return "disabled"
        return "cooling" if self.cooldown_until and self.cooldown_until > now else "active"


@dataclass(frozen=True)
class Deployment:
    id: str
    name: str
    kind: str
    base_url: str | None = None
    api_version: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    models: tuple[str, ...] = ()  # empty: every model of its provider
    model_map: dict[str, str] = field(default_factory=dict)
    priority: int = 0
    weight: int = 1
    enabled: bool = True
    source: str = "api"  # api (database), env (settings) or builtin
    configured_by: str = ""  # env: the variable that holds its secret, for error messages
    credentials: tuple[Credential, ...] = ()
    cooldown_until: datetime | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    last_test_status: str | None = None
    last_test_ms: float | None = None
    last_test_at: datetime | None = None

    @property
    def provider(self) -> str:
        return KINDS[self.kind]

    @property
    def label(self) -> str:
        """How errors name it: `openai-env, from OPENAI_API_KEY` or `azure-eu`."""
        return f"{self.name}, from {self.configured_by}" if self.configured_by else self.name

    def serves(self, spec: ModelSpec) -> bool:
        return spec.provider == self.provider and (not self.models or spec.name in self.models)

    def state(self, now: datetime) -> str:
        if not self.enabled:
            return "disabled"
        return "cooling" if self.cooldown_until and self.cooldown_until > now else "healthy"

    def usable_credentials(self, now: datetime) -> list[Credential]:
        return [c for c in self.credentials if c.state(now) == "active"]
