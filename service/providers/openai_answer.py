"""An OpenAI images answer, read: its JSON parsed around the images, each image's base64
decoded, and the tokens it reports; and what a caller hears when an image answered as a
`url` was not fetched (the fetch itself is service/net's guarded one).

The openai provider (service/providers/openai.py) calls the SDK and hands the raw body here;
nothing in this module calls the SDK or the network.
"""

from __future__ import annotations

import binascii
from typing import Any

import orjson

from service.catalog.pricing import TokenUsage
from service.errors import UpstreamFailed
from service.net.fetch import FetchFailed

# What _json_around_images looks for in an answer's JSON.
B64_KEY, SPACE, BACKSLASH, COLON, QUOTE = b'"b64_json"', b" \t\r\n", 0x5C, 0x3A, 0x22


def token_usage(usage: Any) -> TokenUsage | None:
    """The tokens of an answer's `usage` (its JSON, or the SDK's model of a stream event)."""
    if not usage:
        return None
    inputs, outputs = _field(usage, "input_tokens_details"), _field(usage, "output_tokens_details")
    return TokenUsage(
        input_text=_count(inputs, "text_tokens") if inputs else _count(usage, "input_tokens"),
        input_image=_count(inputs, "image_tokens") if inputs else 0,
        output_text=_count(outputs, "text_tokens") if outputs else 0,
        output_image=(_count(outputs, "image_tokens") if outputs
                      else _count(usage, "output_tokens")),
    )


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _count(value: Any, name: str) -> int:
    """A token count of a dict, or of an SDK model (where it may hold a plain dict)."""
    return int(_field(value, name) or 0)


def _json(raw: bytes) -> dict[str, Any]:
    """The answer's JSON object (ValueError when it is not one)."""
    payload = _json_around_images(raw)
    if payload is None:
        payload = orjson.loads(raw)
    if not isinstance(payload, dict):
        raise ValueError("not an object")
    return payload


def _json_around_images(raw: bytes) -> dict[str, Any] | None:
    """The answer's JSON parsed around its images: each `"b64_json": "..."` value is left
    in `raw` and given as a view of it, so that tens of megabytes of base64 are neither
    copied into strings nor checked as UTF-8 (a 10-image answer is ~33 MB). None when the
    answer is not of that plain shape (an escape near a b64_json, a count that does not
    add up): it is then parsed whole."""
    view, pieces, spans, pos = memoryview(raw), [], [], 0
    try:
        while (key := raw.find(B64_KEY, pos)) >= 0:
            if key and raw[key - 1] == BACKSLASH:
                return None
            i = _skip_space(raw, key + len(B64_KEY))
            if raw[i] != COLON:
                return None
            i = _skip_space(raw, i + 1)
            if raw[i] != QUOTE:
                return None
            end = raw.find(b'"', i + 1)
            if end < 0 or raw.find(b"\\", i + 1, end) >= 0:
                return None
            pieces.append(view[pos:i + 1])
            spans.append(view[i + 1:end])
            pos = end
        if not spans:
            return None
        pieces.append(view[pos:])
        payload = orjson.loads(b"".join(pieces))
    except (IndexError, orjson.JSONDecodeError):
        return None
    items = payload.get("data") if isinstance(payload, dict) else None
    holders = [item for item in items or () if isinstance(item, dict)
               and item.get("b64_json") == ""] if isinstance(items, list) else []
    if len(holders) != len(spans):
        return None
    for item, span in zip(holders, spans, strict=True):
        item["b64_json"] = span
    return payload


def _skip_space(raw: bytes, i: int) -> int:
    while raw[i] in SPACE:
        i += 1
    return i


def _decode(encoded: object) -> bytes:
    try:
        return binascii.a2b_base64(encoded)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise UpstreamFailed("The image provider answered an image that is not base64.",
                             reason="UPSTREAM_BAD_RESPONSE") from None


# What a caller hears when a `url` answer is not fetched: never the URL itself (the upstream
# chose it; it may name an internal address or carry a signature).
URL_ANSWER_PROBLEMS = {
    "IMAGE_URL_FORBIDDEN": "it points at an address this server may not reach (loopback, "
                           "private, link-local or metadata)",
    "INVALID_IMAGE_URL": "it is not a valid http(s) URL",
    "IMAGE_TOO_LARGE": "the image is larger than this server fetches",
    "FETCH_TIMEOUT": "fetching it took too long",
}


def url_answer_error(failed: FetchFailed) -> UpstreamFailed:
    problem = URL_ANSWER_PROBLEMS.get(failed.reason, "fetching it failed")
    return UpstreamFailed(f"The image provider answered a URL this server did not fetch: "
                          f"{problem}.", reason=f"UPSTREAM_{failed.reason}",
                          retryable=failed.reason in ("FETCH_TIMEOUT", "FETCH_FAILED"))
