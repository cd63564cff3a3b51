"""What a generation is asked and what it answers, as plain values: the pipeline's own
terms, free of the gRPC contract (service/contract/ converts the proto messages)."""

from __future__ import annotations

from dataclasses import dataclass

from service.catalog.pricing import TokenUsage


@dataclass(frozen=True)
class ImageRequest:
    """A GenerateRequest's fields. `None`: the field was not sent (so its default applies).
    What makes two requests the same, for idempotency keys, is decided once they are
    planned, defaults filled in (validation.identity)."""

    prompt: str = ""
    model: str = ""
    image: tuple[str | bytes, ...] = ()  # URL or base64 text, or a file's bytes (edits)
    n: int | None = None
    size: str = ""
    response_format: str = ""
    quality: str = ""
    style: str = ""
    output_format: str = ""
    output_compression: int | None = None
    background: str = ""
    moderation: str = ""
    user: str = ""
    stream: bool = False
    partial_images: int | None = None
    mask: str | bytes | None = None  # as `image`; None: no mask
    input_fidelity: str = ""
    variation: bool = False  # `POST /images/variations`: a model that cannot edit names `model`


@dataclass(frozen=True)
class AnswerImage:
    """One image of an answer: its bytes (`b64_json` answers) or its signed `url`."""

    b64_json: bytes | None = None
    url: str | None = None
    revised_prompt: str | None = None


@dataclass(frozen=True)
class Answer:
    """A generation's answer, as GenerateResponse carries it."""

    created: int
    data: tuple[AnswerImage, ...]
    output_format: str
    background: str | None = None
    usage: TokenUsage | None = None
