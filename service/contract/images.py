"""ImageService messages ⇄ the generation pipeline's values (service/generation/request.py)."""

from __future__ import annotations

import hashlib

from aigne.hub.v1 import image_service_pb2 as pb
from service.catalog.pricing import TokenUsage
from service.generation.request import Answer, AnswerImage, ImageRequest


def fingerprint(operation: str, *parts: bytes) -> str:
    """What makes two requests the same: the operation and its canonical request bytes."""
    digest = hashlib.sha256(operation.encode())
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def image_request(request: pb.GenerateRequest) -> ImageRequest:
    """The request's fields, `None` where an optional field was not sent."""
    return ImageRequest(
        prompt=request.prompt, model=request.model, image=tuple(request.image),
        n=request.n if request.HasField("n") else None, size=request.size,
        response_format=request.response_format, quality=request.quality,
        style=request.style, output_format=request.output_format,
        output_compression=(request.output_compression
                            if request.HasField("output_compression") else None),
        background=request.background, moderation=request.moderation, user=request.user,
        stream=request.stream,
        partial_images=request.partial_images if request.HasField("partial_images") else None,
        mask=request.mask or None, input_fidelity=request.input_fidelity)


def generate_response(answer: Answer, *, with_bytes: bool = True) -> pb.GenerateResponse:
    """`answer` as a GenerateResponse; `with_bytes` False leaves the `b64_json` images'
    bytes out (the wire writer puts them in: response_and_payloads)."""
    return pb.GenerateResponse(
        created=answer.created, data=[image(i, with_bytes=with_bytes) for i in answer.data],
        usage=image_usage(answer.usage), output_format=answer.output_format,
        background=answer.background or "")


def response_and_payloads(answer: Answer
                          ) -> tuple[pb.GenerateResponse, list[bytes | None]]:
    """`answer` as a GenerateResponse without its images' bytes, and those bytes (None for
    `url` images): for service/rpc/wire.py, which writes each answer once."""
    return generate_response(answer, with_bytes=False), [i.b64_json for i in answer.data]


def image(value: AnswerImage, *, with_bytes: bool = True) -> pb.Image:
    if value.b64_json is None:
        return pb.Image(url=value.url or "", revised_prompt=value.revised_prompt or "")
    if not with_bytes:
        return pb.Image(revised_prompt=value.revised_prompt or "")
    return pb.Image(b64_json=value.b64_json, revised_prompt=value.revised_prompt or "")


def image_usage(usage: TokenUsage | None) -> pb.ImageUsage | None:
    if usage is None:
        return None
    inputs, outputs = usage.inputs, usage.outputs
    return pb.ImageUsage(
        total_tokens=inputs + outputs, input_tokens=inputs, output_tokens=outputs,
        input_tokens_details=pb.TokenDetails(text_tokens=usage.input_text,
                                             image_tokens=usage.input_image),
        output_tokens_details=pb.TokenDetails(text_tokens=usage.output_text,
                                              image_tokens=usage.output_image))
