"""Structured logs: one JSON object per line on stderr, via structlog; the standard library's
records (gRPC's, alembic's...) as JSON lines too, a traceback inside the line."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson
import structlog


class JsonLines(logging.Formatter):
    """A standard library record as one JSON line, shaped like structlog's."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"event": record.getMessage(), "level": record.levelname.lower(),
                "logger": record.name,
                "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat()
                .replace("+00:00", "Z")}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


class InvalidHeaderValue(logging.Filter):
    """gRPC logs a header value that is not UTF-8 with its bytes (perhaps a secret) and a
    traceback: say only what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Invalid encoding on"):
            record.msg, record.args, record.exc_info, record.exc_text = (
                "a request header value is not valid UTF-8; it was ignored", None, None, None)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
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
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
