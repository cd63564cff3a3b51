"""One frozen Settings object, read once from the environment (prefix AIGNE_HUB_).

Everything below this module receives the values it needs; nothing else reads os.environ.
Every field is listed in docs/configuration.md.
"""
# Long: one Settings class whose fields are the configuration table (docs/configuration.md);
# split, that table would be scattered over modules.

from __future__ import annotations

import os
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "AIGNE_HUB_"
MIB = 1 << 20
PRESIGN_MAX_SECONDS = 7 * 86_400  # the longest an S3 (SigV4) presigned URL may live


class Settings(BaseSettings):
    """The server's configuration. Secrets are SecretStr and never printed."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

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

    # The image store: files under store_dir (one machine), or an S3-compatible bucket
    # (several). `url` answers are this service's signed URLs, served by any replica from
    # the store (`signed`), or the bucket's own presigned URLs (`presigned`, S3 only); both
    # expire after url_ttl_seconds. Images older than image_retention_seconds are deleted
    # (0 keeps them) by a sweep every image_sweep_interval_seconds (0: none) and, on S3, by
    # a bucket lifecycle rule the server sets up (whole days) unless s3_lifecycle_rule is off.
    image_store: Literal["filesystem", "s3"] = "filesystem"
    image_urls: Literal["signed", "presigned"] = "signed"
    image_retention_seconds: int = Field(default=86_400, ge=0)
    image_sweep_interval_seconds: float = Field(default=3600.0, ge=0)
    s3_bucket: str | None = None
    s3_prefix: str = "images/"
    s3_endpoint_url: str | None = None  # unset: AWS; else MinIO, Ceph, R2, GCS interop...
    s3_presign_endpoint_url: str | None = None  # the endpoint clients reach, if it differs
    s3_region: str | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # Unset: boto3's own chain (AWS_* variables, a web identity, an instance role).
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_lifecycle_rule: bool = True

    # Signed image URLs: the public base (for deployments behind a load balancer) and TTL.
    public_base_url: str | None = None
    url_ttl_seconds: int = Field(default=3600, ge=1)
    signing_secret: SecretStr | None = None

    # API keys: comma-separated lists accepted besides the keys in the database (plain and
    # admin keys, for deployments and tests), and the secret that keys are digested with
    # (HMAC-SHA256) before they are stored or looked up.
    api_keys: SecretStr | None = None
    admin_api_keys: SecretStr | None = None
    key_hash_secret: SecretStr | None = None

    # Provider credentials added through the admin API or the CLI are encrypted at rest with
    # this key (Fernet; a comma-separated list rotates keys: the first encrypts, all decrypt).
    credentials_key: SecretStr | None = None

    # Usage: how many credits one US dollar of cost is (costs are recorded in both).
    credits_per_usd: Decimal = Field(default=Decimal(1000), gt=0)

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
    # Request headers: the most Envoy accepts (431 above it); the gRPC server's metadata
    # limit is set above it, so whatever Envoy passes on, the server takes.
    max_header_bytes: int = Field(default=32 * 1024, ge=8 * 1024, le=96 * 1024)
    # Slow clients at the public edge (Envoy): the time to send a request's headers, how
    # long a connection may sit idle with no request in progress...
    client_header_timeout_seconds: float = Field(default=10.0, gt=0)
    client_idle_timeout_seconds: float = Field(default=60.0, gt=0)
    # ...and the time to send a whole request, body included (not the answer's wait).
    client_request_timeout_seconds: float = Field(default=120.0, gt=0)
    # Image work (the local renderer's decoding, drawing and encoding): CPU-heavy, so it runs
    # off the event loop on this many threads per process; and the pixels one request may
    # take (its source images together; with the local renderer, and the images it asks
    # for), refused with a 400 above that.
    image_work_threads: int = Field(default=2, ge=1)
    max_request_pixels: int = Field(default=64_000_000, ge=1_000_000)
    # Retries of a failed upstream call (5xx, broken connection), within the request's budget.
    upstream_retries: int = Field(default=2, ge=0)
    upstream_retry_base_seconds: float = Field(default=0.5, ge=0)
    # Routing over deployments: a cap on one upstream attempt (0: the request's whole budget),
    # then move on; consecutive failures that put a deployment in cooldown, and for how long;
    # how long a credential rests after a 429 that named no Retry-After; how often a process
    # re-reads deployments and their health from the database.
    upstream_attempt_timeout_seconds: float = Field(default=0.0, ge=0)
    deployment_failure_threshold: int = Field(default=3, ge=1)
    deployment_cooldown_seconds: float = Field(default=30.0, ge=0)
    credential_cooldown_seconds: float = Field(default=30.0, ge=0)
    routing_refresh_seconds: float = Field(default=2.0, ge=0)

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

    # Long generations (issue 11): idempotent retries, streams, background jobs, webhooks.
    # How long an Idempotency-Key is remembered; the seconds between progress events of a
    # quiet stream (they keep proxies from cutting it).
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60)
    stream_heartbeat_seconds: float = Field(default=15.0, gt=0)
    # Jobs: how many run at once per server process; how long a process's claim on a job
    # lasts without renewal (another process takes over a job whose claim lapsed); how often
    # each process looks for jobs and webhooks to take up; how often a job interrupted by a
    # restart is run again before it fails; how long a stopping server lets running jobs
    # finish before it hands them back to the queue.
    job_concurrency: int = Field(default=4, ge=1)
    job_lease_seconds: float = Field(default=30.0, gt=0)
    job_poll_seconds: float = Field(default=2.0, gt=0)
    job_max_attempts: int = Field(default=3, ge=1)
    job_stop_grace_seconds: float = Field(default=10.0, ge=0)
    # Webhooks: the secret each key's webhook secret is derived from (share it between
    # replicas); hosts (`host` or `host:port`) that may resolve to private addresses; one
    # delivery's time limit; retries after a failed delivery, the first after the base delay,
    # doubling up to an hour.
    webhook_secret: SecretStr | None = None
    webhook_url_allowlist: str = ""
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_retries: int = Field(default=8, ge=0)
    webhook_retry_base_seconds: float = Field(default=5.0, ge=0)
    # Webhooks are posted by their own pool, never holding a job's slot: deliveries at once.
    webhook_concurrency: int = Field(default=8, ge=1)
    # Quota reservations whose request died with its process (SIGKILL) are given back: how
    # often each process sweeps, and how long a reservation may stay unsettled (default: the
    # request budget plus a minute).
    reservation_sweep_seconds: float = Field(default=60.0, gt=0)
    reservation_lease_seconds: float | None = Field(default=None, gt=0)

    # The event loop: uvloop (libuv; ~8% less CPU per request, docs/performance.md) or the
    # standard library's asyncio loop.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    # Logs.
    log_level: str = "INFO"
    log_prompts: bool = False

    # Envoy's upstreams: the server replicas it balances over, as `host:port,...` (unset:
    # this server, host:grpc_port). A name that is not an IP address is resolved by DNS and
    # re-resolved while Envoy runs (a Kubernetes headless Service). And the directory that
    # holds envoy/hub.lua and gen/descriptor/ where Envoy runs (unset: this checkout).
    envoy_upstreams: str = ""
    envoy_assets_root: Path | None = None
    # Where Envoy finds the files beside its config (the SDS files of its TLS secrets): its
    # ConfigMap's mount in Kubernetes; unset: var_dir, where `run` writes them.
    envoy_config_dir: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        for name in ("signing_secret", "key_hash_secret", "credentials_key"):
            secret = getattr(self, name)
            if secret is not None and not secret.get_secret_value().strip():
                raise ValueError(f"AIGNE_HUB_{name.upper()} is set but empty: set it to a long "
                                 "random value, or unset it to have one generated into var/")
        if self.database_url is not None and not self.database_url.strip():
            raise ValueError("AIGNE_HUB_DATABASE_URL is set but empty: name the database, or "
                             "unset it for SQLite under var/")
        if self.image_store == "s3" and not self.s3_bucket:
            raise ValueError("AIGNE_HUB_IMAGE_STORE=s3 needs AIGNE_HUB_S3_BUCKET")
        if self.image_urls == "presigned":
            if self.image_store != "s3":
                raise ValueError("AIGNE_HUB_IMAGE_URLS=presigned needs AIGNE_HUB_IMAGE_STORE=s3")
            if self.url_ttl_seconds > PRESIGN_MAX_SECONDS:
                raise ValueError(f"presigned URLs live at most {PRESIGN_MAX_SECONDS} s: lower "
                                 "AIGNE_HUB_URL_TTL_SECONDS")
        if 0 < self.image_retention_seconds < self.url_ttl_seconds:
            raise ValueError("AIGNE_HUB_IMAGE_RETENTION_SECONDS is shorter than "
                             "AIGNE_HUB_URL_TTL_SECONDS: image URLs would stop working early")
        if self.webhook_secret is not None and not self.webhook_secret.get_secret_value().strip():
            raise ValueError("AIGNE_HUB_WEBHOOK_SECRET is set but empty: set it to a long random "
                             "value, or unset it to have one generated into var/")
        try:
            self.upstreams  # noqa: B018
        except ValueError:
            raise ValueError("AIGNE_HUB_ENVOY_UPSTREAMS must be host:port[,host:port...]; "
                             f"got {self.envoy_upstreams!r}") from None
        return self
    # Operations: Prometheus metrics on their own port (on `host`; 0 turns them off), the
    # bound on generations running at once (beyond it: 503 `overloaded`, Retry-After), and
    # how long a shutdown waits for requests in flight.
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    # 2,048 waiting generations hold ~270 MB (server and Envoy: 134 KB each, measured by the
    # burst case of `make bench`, docs/performance.md).
    max_in_flight_generations: int = Field(default=2048, ge=1)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)

    # Traces (docs/operations.md#traces): OpenTelemetry's own variables, unprefixed. No
    # endpoint: no exporter, no tracer provider, nothing instrumented. Envoy exports its spans
    # to the same collector (its OpenTelemetry tracer, sampling at the same ratio).
    otel_exporter_otlp_endpoint: str | None = Field(default=None, validation_alias=AliasChoices(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "AIGNE_HUB_OTEL_EXPORTER_OTLP_ENDPOINT"))
    otel_exporter_otlp_protocol: Literal["grpc", "http/protobuf"] = Field(
        default="http/protobuf", validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "AIGNE_HUB_OTEL_EXPORTER_OTLP_PROTOCOL"))
    otel_service_name: str = Field(default="aigne-hub-images", validation_alias=AliasChoices(
        "OTEL_SERVICE_NAME", "AIGNE_HUB_OTEL_SERVICE_NAME"))
    otel_traces_sampler: Literal[
        "always_on", "always_off", "traceidratio", "parentbased_always_on",
        "parentbased_always_off", "parentbased_traceidratio"] = Field(
        default="parentbased_always_on", validation_alias=AliasChoices(
            "OTEL_TRACES_SAMPLER", "AIGNE_HUB_OTEL_TRACES_SAMPLER"))
    otel_traces_sampler_arg: float = Field(default=1.0, ge=0, le=1, validation_alias=AliasChoices(
        "OTEL_TRACES_SAMPLER_ARG", "AIGNE_HUB_OTEL_TRACES_SAMPLER_ARG"))

    # TLS at Envoy's listener (REST and gRPC on one port, reloaded when the files change),
    # optionally asking callers for a certificate signed by tls_client_ca_file; and mTLS from
    # Envoy to the servers: the servers' certificate, Envoy's client certificate, one CA.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    tls_client_certificate: Literal["required", "optional"] = "required"
    upstream_tls_cert_file: Path | None = None
    upstream_tls_key_file: Path | None = None
    upstream_tls_client_cert_file: Path | None = None
    upstream_tls_client_key_file: Path | None = None
    upstream_tls_ca_file: Path | None = None

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        pairs = (("tls_cert_file", "tls_key_file"),
                 ("upstream_tls_cert_file", "upstream_tls_key_file"),
                 ("upstream_tls_client_cert_file", "upstream_tls_client_key_file"))
        for cert, key in pairs:
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(f"AIGNE_HUB_{cert.upper()} and AIGNE_HUB_{key.upper()} go "
                                 "together: set both or neither")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("AIGNE_HUB_TLS_CLIENT_CA_FILE needs AIGNE_HUB_TLS_CERT_FILE")
        upstream = (self.upstream_tls_cert_file, self.upstream_tls_client_cert_file,
                    self.upstream_tls_ca_file)
        if any(upstream) and not all(upstream):
            raise ValueError("mTLS to the servers needs AIGNE_HUB_UPSTREAM_TLS_CERT_FILE, "
                             "_CLIENT_CERT_FILE and _CA_FILE (with their keys)")
        return self

    @property
    def edge_url(self) -> str:
        """Envoy's own address, as clients on this machine reach it: https with TLS."""
        return f"{'https' if self.edge_tls else 'http'}://{self.host}:{self.http_port}"

    @property
    def envoy_dir(self) -> Path:
        return self.envoy_config_dir or self.var_dir

    @property
    def tracing(self) -> bool:
        return bool(self.otel_exporter_otlp_endpoint)

    @property
    def edge_tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def upstream_tls(self) -> bool:
        return self.upstream_tls_cert_file is not None

    @property
    def images_dir(self) -> Path:
        return self.store_dir or self.var_dir / "images"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.var_dir / 'hub.db'}"

    @property
    def grpc_metadata_bytes(self) -> int:
        """The gRPC server's metadata limit: twice Envoy's header limit, room for the
        headers Envoy adds and gRPC's overhead of 32 bytes per entry."""
        return 2 * self.max_header_bytes + 16 * 1024

    @property
    def public_base(self) -> str:
        scheme = "https" if self.edge_tls else "http"
        return (self.public_base_url or f"{scheme}://{self.host}:{self.http_port}").rstrip("/")

    @property
    def upstreams(self) -> list[tuple[str, int]]:
        """Envoy's upstreams: AIGNE_HUB_ENVOY_UPSTREAMS, else this server."""
        found = []
        for item in self.envoy_upstreams.split(","):
            if item.strip():
                host, _, port = item.strip().rpartition(":")
                found.append((host.strip("[]"), int(port)))
        return found or [(self.host, self.grpc_port)]

    @property
    def image_url_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.image_url_allowlist.split(",")
                         if h.strip())

    @property
    def idempotency_keep_seconds(self) -> int:
        """How long an Idempotency-Key's answer is replayed: its TTL, or the image retention
        when that is shorter (a kept answer's images must still be there)."""
        if self.image_retention_seconds:
            return min(self.idempotency_ttl_seconds, self.image_retention_seconds)
        return self.idempotency_ttl_seconds

    @property
    def webhook_url_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.webhook_url_allowlist.split(",")
                         if h.strip())

    @property
    def static_api_keys(self) -> list[str]:
        return _split(self.api_keys)

    @property
    def static_admin_api_keys(self) -> list[str]:
        return _split(self.admin_api_keys)

    def with_generated_secrets(self) -> Settings:
        """Fill unset secrets from files under var/, creating them (mode 0600) if missing."""
        update = {}
        for field, filename in (("signing_secret", "signing-secret"),
                                ("key_hash_secret", "key-hash-secret"),
                                ("credentials_key", "credentials-key"),
                                ("webhook_secret", "webhook-secret")):
            if getattr(self, field) is None:
                update[field] = SecretStr(_read_or_create_secret(self.var_dir / filename))
        return self.model_copy(update=update) if update else self

    def child_environment(self, **overrides: object) -> dict[str, str]:
        """The environment of a server process started from this one (a replica): these
        settings, with `overrides`, as the variables Settings reads; and the variables
        that are not ours (PATH, the SDKs' own: AWS_*, GOOGLE_APPLICATION_CREDENTIALS...)
        passed on as they are."""
        environment = {name: value for name, value in os.environ.items()
                       if not name.startswith(ENV_PREFIX) and name not in _aliases()}
        values = {**{name: getattr(self, name) for name in type(self).model_fields},
                  **overrides}
        for name, value in values.items():
            if value is not None:
                environment[_variable(name)] = _as_text(value)
        return environment


def variable(name: str) -> str:
    """One environment variable that the command line names (e.g. the variable holding a
    credential's secret for `deployments credentials add --secret-env`); '' when unset."""
    return os.environ.get(name, "")


def _variable(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return ENV_PREFIX + field.upper()


def _aliases() -> set[str]:
    return {str(choice) for info in Settings.model_fields.values()
            if isinstance(info.validation_alias, AliasChoices)
            for choice in info.validation_alias.choices}


def _as_text(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _split(keys: SecretStr | None) -> list[str]:
    if keys is None:
        return []
    return [k.strip() for k in keys.get_secret_value().split(",") if k.strip()]


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
