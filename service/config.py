"""One frozen Settings object, read once from the environment (prefix AIGNE_HUB_).

Everything below this module receives the values it needs; nothing else reads os.environ.
Every field is listed in the README's configuration table.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1 << 20


class Settings(BaseSettings):
    """The server's configuration. Secrets are SecretStr and never printed."""

    model_config = SettingsConfigDict(env_prefix="AIGNE_HUB_", frozen=True, extra="ignore")

    # Network: the server's own gRPC port and Envoy's port for REST and gRPC.
    host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_port: int = 8080
    envoy_admin_port: int = 9901
    envoy_concurrency: int = Field(default=1, ge=1)

    # Where state lives: the database, stored images and generated secrets.
    var_dir: Path = Path("var")
    store_dir: Path | None = None
    database_url: str | None = None

    # Signed image URLs: the public base (for deployments behind a load balancer) and TTL.
    public_base_url: str | None = None
    url_ttl_seconds: int = Field(default=3600, ge=1)
    signing_secret: SecretStr | None = None

    # API keys: a comma-separated list accepted besides the keys in the database, and the
    # secret that keys are digested with (HMAC-SHA256) before they are stored or looked up.
    api_keys: SecretStr | None = None
    key_hash_secret: SecretStr | None = None

    # Models: the default when a request names none (unset: dall-e-2 when OpenAI is
    # configured, else the local renderer), and an optional file that adds or overrides
    # registry entries.
    default_model: str | None = None
    models_file: Path | None = None

    # Limits: how long one request may take (the REST budget, and the cap on gRPC
    # deadlines), body sizes through Envoy and gRPC, and upstream calls run at once per request.
    request_timeout_seconds: float = Field(default=300.0, gt=0)
    max_request_bytes: int = Field(default=64 * MIB, ge=MIB)
    max_response_bytes: int = Field(default=256 * MIB, ge=MIB)
    fan_out_concurrency: int = Field(default=4, ge=1)
    # Retries of a failed upstream call (5xx, broken connection), within the request's budget.
    upstream_retries: int = Field(default=2, ge=0)
    upstream_retry_base_seconds: float = Field(default=0.5, ge=0)

    # Source images given as URLs: fetched with a guard against server-side request forgery.
    # Hosts (`host` or `host:port`) listed here may resolve to loopback or private addresses.
    image_url_allowlist: str = ""
    image_fetch_max_bytes: int = Field(default=50 * MIB, ge=1)
    image_fetch_timeout_seconds: float = Field(default=15.0, gt=0)

    # Providers. The usual unprefixed variables work too.
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AIGNE_HUB_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("AIGNE_HUB_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    gemini_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices(
            "AIGNE_HUB_GEMINI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"))
    google_gemini_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices(
            "AIGNE_HUB_GOOGLE_GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL"))
    vertex_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices(
            "AIGNE_HUB_VERTEX_API_KEY", "GOOGLE_VERTEX_API_KEY"))
    google_cloud_project: str | None = Field(
        default=None, validation_alias=AliasChoices(
            "AIGNE_HUB_GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_PROJECT"))
    google_cloud_location: str = Field(
        default="global", validation_alias=AliasChoices(
            "AIGNE_HUB_GOOGLE_CLOUD_LOCATION", "GOOGLE_CLOUD_LOCATION"))
    google_vertex_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices(
            "AIGNE_HUB_GOOGLE_VERTEX_BASE_URL", "GOOGLE_VERTEX_BASE_URL"))

    # Logs.
    log_level: str = "INFO"
    log_prompts: bool = False

    # Operations: Prometheus metrics on their own port (on `host`; 0 turns them off), the
    # bound on generations running at once (beyond it: 503 `overloaded`, Retry-After), and
    # how long a shutdown waits for requests in flight.
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    max_in_flight_generations: int = Field(default=64, ge=1)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)

    @property
    def images_dir(self) -> Path:
        return self.store_dir or self.var_dir / "images"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.var_dir / 'hub.db'}"

    @property
    def public_base(self) -> str:
        return (self.public_base_url or f"http://{self.host}:{self.http_port}").rstrip("/")

    @property
    def image_url_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.image_url_allowlist.split(",")
                         if h.strip())

    @property
    def static_api_keys(self) -> list[str]:
        if self.api_keys is None:
            return []
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    def with_generated_secrets(self) -> Settings:
        """Fill unset secrets from files under var/, creating them (mode 0600) if missing."""
        update = {}
        for field, filename in (("signing_secret", "signing-secret"),
                                ("key_hash_secret", "key-hash-secret")):
            if getattr(self, field) is None:
                update[field] = SecretStr(_read_or_create_secret(self.var_dir / filename))
        return self.model_copy(update=update) if update else self


def _read_or_create_secret(path: Path) -> str:
    """The secret kept in `path`; a new one is written (mode 0600) if there is none yet.
    Two processes starting at once agree: the file appears whole, and only once."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process was first: use its secret
        finally:
            tmp.unlink()
    return path.read_text().strip()
