"""Answers kept for later: an Answer whose images are names in the image store.

An idempotent request's answer is replayed to its retries, and a job's answer is read
after the job ended; neither keeps image bytes in the database. Every image of such an
answer is put in the image store (also for `b64_json`), and the kept answer holds their
names. Told again, a `url` answer is signed afresh (a new expiry; the same image), a
`b64_json` answer is read back from the store (the same bytes).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from service.catalog.pricing import TokenUsage
from service.generation.request import Answer, AnswerImage
from service.store.base import ImageStore
from service.store.signing import UrlSigner


@dataclass(frozen=True)
class KeptImage:
    name: str  # in the image store
    revised_prompt: str = ""


@dataclass(frozen=True)
class KeptAnswer:
    """An Answer without image bytes."""

    created: int
    response_format: str
    output_format: str
    images: tuple[KeptImage, ...]
    background: str = ""
    usage: dict[str, Any] | None = None  # ImageUsage in its JSON form (see _usage_json)

    def to_json(self) -> dict[str, Any]:
        return {"created": self.created, "response_format": self.response_format,
                "output_format": self.output_format, "background": self.background,
                "usage": self.usage,
                "images": [{"name": i.name, "revised_prompt": i.revised_prompt}
                           for i in self.images]}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> KeptAnswer:
        return cls(created=int(value["created"]), response_format=value["response_format"],
                   output_format=value["output_format"], background=value.get("background", ""),
                   usage=value.get("usage"),
                   images=tuple(KeptImage(i["name"], i.get("revised_prompt", ""))
                                for i in value["images"]))

    @classmethod
    def of(cls, answer: Answer, names: list[str], response_format: str) -> KeptAnswer:
        """Keep `answer`, whose images are stored under `names`, in order."""
        return cls(created=answer.created, response_format=response_format,
                   output_format=answer.output_format, background=answer.background or "",
                   usage=_usage_json(answer.usage),
                   images=tuple(KeptImage(name, image.revised_prompt or "")
                                for name, image in zip(names, answer.data, strict=True)))


async def told(answer: KeptAnswer, store: ImageStore, signer: UrlSigner) -> Answer:
    """The Answer `answer` stands for: urls signed afresh, or bytes read back."""
    return Answer(created=answer.created, data=tuple(await images(answer, store, signer)),
                  output_format=answer.output_format, background=answer.background or None,
                  usage=_usage(answer.usage))


async def images(answer: KeptAnswer, store: ImageStore, signer: UrlSigner
                 ) -> list[AnswerImage]:
    if answer.response_format != "b64_json":
        return [AnswerImage(url=signer.url(i.name), revised_prompt=i.revised_prompt or None)
                for i in answer.images]
    files = await asyncio.gather(*(store.get(i.name) for i in answer.images))
    return [AnswerImage(b64_json=data, revised_prompt=i.revised_prompt or None)
            for (data, _), i in zip(files, answer.images, strict=True)]


def _usage_json(usage: TokenUsage | None) -> dict[str, Any] | None:
    """Token usage as the JSON of the contract's ImageUsage (proto field names, zero
    values left out), the form kept answers have always had."""
    if usage is None:
        return None
    inputs, outputs = usage.inputs, usage.outputs
    shape: dict[str, Any] = {
        "total_tokens": inputs + outputs, "input_tokens": inputs, "output_tokens": outputs,
        "input_tokens_details": {"text_tokens": usage.input_text,
                                 "image_tokens": usage.input_image},
        "output_tokens_details": {"text_tokens": usage.output_text,
                                  "image_tokens": usage.output_image}}
    return _without_zeros(shape)


def _without_zeros(value: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for name, item in value.items():
        if isinstance(item, dict):
            item = _without_zeros(item)
        if item:
            kept[name] = item
    return kept


def _usage(kept: dict[str, Any] | None) -> TokenUsage | None:
    if not kept:
        return None
    inputs, outputs = kept.get("input_tokens_details", {}), kept.get("output_tokens_details", {})
    return TokenUsage(input_text=int(inputs.get("text_tokens", 0)),
                      input_image=int(inputs.get("image_tokens", 0)),
                      output_text=int(outputs.get("text_tokens", 0)),
                      output_image=int(outputs.get("image_tokens", 0)))
