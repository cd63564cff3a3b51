"""Structured logs: one JSON object per line on stderr, via structlog; the standard library's
records (gRPC's, alembic's...) as JSON lines too, a traceback inside the line."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson
import structlog

from service.errors import KnownSecrets


class JsonLines(logging.Formatter):
    """A standard library record as one JSON line, shaped like structlog's, with every
    provider credential the server holds masked (`secrets`)."""

    def __init__(self, secrets: KnownSecrets | None = None) -> None:
        super().__init__()
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        line = {"event": record.getMessage(), "level": record.levelname.lower(),
                "logger": record.name,
                "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat()
                .replace("+00:00", "Z")}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        text = orjson.dumps(line).decode()
        return self._secrets.mask(text) if self._secrets is not None else text


class InvalidHeaderValue(logging.Filter):
    """gRPC logs a header value that is not UTF-8 with its bytes (perhaps a secret) and a
    traceback: say only what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Invalid encoding on"):
            record.msg, record.args, record.exc_info, record.exc_text = (
                "a request header value is not valid UTF-8; it was ignored", None, None, None)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure(level: str = "INFO", secrets: KnownSecrets | None = None) -> None:
    """One JSON line per event; with `secrets`, every provider credential the server holds
    is masked in each line, whatever put it there (an upstream's message, a traceback)."""
    masked = [] if secrets is None else [_masking(secrets)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines(secrets))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for noisy in ("alembic", "botocore", "boto3", "httpx", "httpx2"):  # plain-text chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("grpc._cython.cygrpc").addFilter(InvalidHeaderValue())
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
