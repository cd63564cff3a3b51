"""Structured logs: one JSON object per line on stderr, via structlog."""

from __future__ import annotations

import logging
import sys

import structlog

from service.errors import KnownSecrets


def configure(level: str = "INFO", secrets: KnownSecrets | None = None) -> None:
    """One JSON line per event; with `secrets`, every provider credential the server holds
    is masked in each line, whatever put it there (an upstream's message, a traceback)."""
    masked = [] if secrets is None else [_masking(secrets)]
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(message)s")
    for noisy in ("alembic", "botocore", "boto3", "httpx", "httpx2"):  # plain-text chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
            *masked,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _masking(secrets: KnownSecrets) -> structlog.typing.Processor:
    def mask(logger: object, method: str, line: str) -> str:  # after JSONRenderer: a str
        return secrets.mask(line)
    return mask  # type: ignore[return-value]
