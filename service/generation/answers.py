"""Answers kept for later: a GenerateResponse whose images are names in the image store.

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

from google.protobuf import json_format

from aigne.hub.v1 import image_service_pb2 as pb
from service.store.base import ImageStore
from service.store.signing import UrlSigner


@dataclass(frozen=True)
class KeptImage:
    name: str  # in the image store
    revised_prompt: str = ""


@dataclass(frozen=True)
class KeptAnswer:
    """A GenerateResponse without image bytes."""

    created: int
    response_format: str
    output_format: str
    images: tuple[KeptImage, ...]
    background: str = ""
    usage: dict[str, Any] | None = None  # ImageUsage in its JSON form

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
    def of(cls, response: pb.GenerateResponse, names: list[str],
           response_format: str) -> KeptAnswer:
        """Keep `response`, whose images are stored under `names`, in order."""
        usage = (json_format.MessageToDict(response.usage, preserving_proto_field_name=True)
                 if response.HasField("usage") else None)
        return cls(created=response.created, response_format=response_format,
                   output_format=response.output_format, background=response.background,
                   usage=usage,
                   images=tuple(KeptImage(name, image.revised_prompt)
                                for name, image in zip(names, response.data, strict=True)))

    def usage_message(self) -> pb.ImageUsage | None:
        return json_format.ParseDict(self.usage, pb.ImageUsage()) if self.usage else None


async def told(answer: KeptAnswer, store: ImageStore, signer: UrlSigner) -> pb.GenerateResponse:
    """The GenerateResponse `answer` stands for: urls signed afresh, or bytes read back."""
    return pb.GenerateResponse(
        created=answer.created, data=await images(answer, store, signer),
        usage=answer.usage_message(), output_format=answer.output_format,
        background=answer.background or None)


async def images(answer: KeptAnswer, store: ImageStore, signer: UrlSigner) -> list[pb.Image]:
    if answer.response_format != "b64_json":
        return [pb.Image(url=signer.url(i.name), revised_prompt=i.revised_prompt or None)
                for i in answer.images]
    files = await asyncio.gather(*(store.get(i.name) for i in answer.images))
    return [pb.Image(b64_json=data, revised_prompt=i.revised_prompt or None)
            for (data, _), i in zip(files, answer.images, strict=True)]
