"""One error hierarchy for the whole service.

Code below the servicer raises a HubError; the one interceptor ends the call with it, which
service.rpc.status turns into a google.rpc.Status (ErrorInfo, BadRequest, RetryInfo) for
gRPC and into the OpenAI-shaped JSON body for REST, so both doors say the same thing.
Messages are written for the caller: they never carry a secret, a stack trace or an internal
address.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from google.rpc import code_pb2

DOMAIN = "aigne.dev"
_SECRET_LIKE = re.compile(r"\b(sk|ahk|AIza)[-_A-Za-z0-9*]{6,}")


class HubError(Exception):
    """An error the caller should see. Subclasses fix the status; `reason` is UPPER_SNAKE."""

    code: int = code_pb2.INTERNAL
    http_status: int = 500
    reason: str = "INTERNAL"
    error_type: str = "server_error"
    retryable: bool = False  # whether trying the same call again may succeed

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        reason: str | None = None,
        retry_after: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.metadata = dict(metadata or {})
        if reason is not None:
            self.reason = reason

    def openai_body(self) -> dict[str, object]:
        """The body OpenAI-compatible clients read: {"error": {message, type, param, code}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.reason.lower(),
            }
        }


class InvalidArgument(HubError):
    code = code_pb2.INVALID_ARGUMENT
    http_status = 400
    reason = "INVALID_VALUE"
    error_type = "invalid_request_error"


class ContentPolicyViolation(InvalidArgument):
    reason = "CONTENT_POLICY_VIOLATION"


class Unauthenticated(HubError):
    code = code_pb2.UNAUTHENTICATED
    http_status = 401
    reason = "INVALID_API_KEY"
    error_type = "authentication_error"


class PermissionDenied(HubError):
    code = code_pb2.PERMISSION_DENIED
    http_status = 403
    reason = "PERMISSION_DENIED"
    error_type = "permission_error"


class NotFound(HubError):
    code = code_pb2.NOT_FOUND
    http_status = 404
    reason = "NOT_FOUND"
    error_type = "invalid_request_error"


class Conflict(HubError):
    code = code_pb2.ABORTED
    http_status = 409
    reason = "CONFLICT"
    error_type = "invalid_request_error"


class ResourceExhausted(HubError):
    code = code_pb2.RESOURCE_EXHAUSTED
    http_status = 429
    reason = "RATE_LIMIT_EXCEEDED"
    error_type = "rate_limit_error"


class ProviderNotConfigured(HubError):
    """The model's provider has no credentials here; the message names what to set."""

    code = code_pb2.FAILED_PRECONDITION
    http_status = 503
    reason = "PROVIDER_NOT_CONFIGURED"
    error_type = "server_error"


class Unavailable(HubError):
    code = code_pb2.UNAVAILABLE
    http_status = 503
    reason = "UNAVAILABLE"
    error_type = "server_error"


class Overloaded(Unavailable):
    """This process runs as many generations as it may at once (back-pressure)."""

    reason = "OVERLOADED"


class ShuttingDown(Unavailable):
    """This process is draining for shutdown and takes no new generations."""

    reason = "SHUTTING_DOWN"


class UpstreamFailed(HubError):
    """The provider answered with an error of its own (5xx, garbage, broken connection).
    Retryable unless said otherwise."""

    code = code_pb2.UNAVAILABLE
    http_status = 502
    reason = "UPSTREAM_ERROR"
    error_type = "server_error"
    retryable = True

    def __init__(self, message: str, *, retryable: bool = True, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retryable = retryable


class DeadlineExceeded(HubError):
    code = code_pb2.DEADLINE_EXCEEDED
    http_status = 504
    reason = "TIMEOUT"
    error_type = "server_error"


class Internal(HubError):
    """Anything unexpected. The details go to the log, never to the caller."""


def redact(text: str, secrets: KnownSecrets | None = None) -> str:
    """`text` with every credential this server holds masked (`secrets`), and anything else
    that looks like an API key, for messages from upstreams."""
    if secrets is not None:
        text = secrets.mask(text)
    return _SECRET_LIKE.sub(lambda m: m.group(1) + "-***", text)


class KnownSecrets:
    """The provider credentials this server holds (every deployment's, the environment's),
    as plain values: masked wherever an upstream's words are passed on, in error bodies and
    in the log. Shared by the router, which keeps it current, the providers and the log.

    Upstreams also quote a key in part, and those echoes are masked too: a token cut by an
    elision (three or more `*` and `.`, or a `…`) whose visible ends are the ends of one
    known credential, e.g. `sk-proj-****abcd` (its last `SUFFIX_SHOWN` characters or more
    after the elision, with nothing or a start of the key before it) or `sk-abc123...` (at
    least `PREFIX_SHOWN` characters past the key's scheme, such as `sk-`, `sk-proj-` or
    `AIza`, and `MIN_LENGTH` in all). A scheme alone (`sk-proj-...`) or a shorter end says
    nothing of the key and stays."""

    MIN_LENGTH = 8  # shorter values would mask ordinary words; no real credential is
    PREFIX_SHOWN = 6  # a prefix echo shows this much of a key beyond its scheme
    SUFFIX_SHOWN = 4  # a suffix echo: this many last characters (OpenAI shows four)
    # What every key of a kind starts with: sk-, sk-proj-, gsk_, Google's AIza.
    _SCHEME = re.compile(r"AIza|[A-Za-z]{1,8}(?:[-_][A-Za-z0-9]{1,8})*[-_]")
    # From a word's start only: linear in the text, however long its words.
    _ELIDED = re.compile(
        r"(?<![-\w])(?P<head>[-\w]*)(?:[*.…]{3,}|[*.]*…[*.…]*)(?P<tail>[-\w]*)")

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self._shortest_prefix: dict[str, int] = {}
        self.update(values)

    def update(self, values: Iterable[str]) -> None:
        """Add `values` (the ones long enough to be credentials) to what is masked."""
        values = self._values | {v for v in values if len(v) >= self.MIN_LENGTH}
        if values != self._values:
            self._values = frozenset(values)
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))
            self._shortest_prefix = {v: self._prefix_shown(v) for v in ordered}

    def _prefix_shown(self, value: str) -> int:
        scheme = self._SCHEME.match(value[:16])
        return max(self.MIN_LENGTH, (scheme.end() if scheme else 0) + self.PREFIX_SHOWN)

    def mask(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        text = self._pattern.sub("***", text)
        if "**" in text or ".." in text or "…" in text:
            text = self._ELIDED.sub(self._masked_echo, text)
        return text

    def _masked_echo(self, elided: re.Match[str]) -> str:
        """`***` for an elided token that shows the ends of a known credential."""
        head, tail = elided.group("head"), elided.group("tail")
        for value, shortest in self._shortest_prefix.items():
            if not value.startswith(head):
                continue
            if len(head) >= shortest or (len(tail) >= self.SUFFIX_SHOWN
                                         and value.endswith(tail)):
                return "***"
        return elided.group(0)
