"""JobService's parts, built from Settings: the webhook sender and the job runner."""

from __future__ import annotations

from service.accounting.keys import KeyStore
from service.accounting.usage import UsageRecorder
from service.config import Settings
from service.db import Database
from service.jobs.runner import Jobs
from service.jobs.webhooks import Webhooks
from service.store.storage import ImageStorage


def background_jobs(settings: Settings, database: Database, *, keys: KeyStore,
                    usage: UsageRecorder, storage: ImageStorage) -> tuple[Webhooks, Jobs]:
    """JobService's parts: the webhook sender and the job runner."""
    assert settings.webhook_secret is not None
    webhooks = Webhooks(settings.webhook_secret.get_secret_value().encode(),
                        settings.webhook_url_hosts, settings.webhook_timeout_seconds)
    jobs = Jobs(database, keys=keys, usage=usage, webhooks=webhooks, store=storage.store,
                signer=storage.urls, concurrency=settings.job_concurrency,
                lease_seconds=settings.job_lease_seconds, poll_seconds=settings.job_poll_seconds,
                max_attempts=settings.job_max_attempts,
                run_seconds=settings.request_timeout_seconds,
                stop_grace_seconds=settings.job_stop_grace_seconds,
                webhook_retries=settings.webhook_retries,
                webhook_retry_base_seconds=settings.webhook_retry_base_seconds,
                webhook_concurrency=settings.webhook_concurrency)
    return webhooks, jobs
