"""An ImageRequest and its model route in, a checked GenerationPlan out, or InvalidArgument
naming the field.

A request is checked by the rules of the model it names, even when a successor serves it
(a dall-e-2 request still may not ask for `hd`); the plan then says what to ask the
successor for and what the client must get back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from service.catalog.models import ModelSpec, Route, Size
from service.errors import InvalidArgument
from service.generation.request import ImageRequest
from service.providers.base import ImageJob

MAX_N = 10
RESPONSE_FORMATS = ("url", "b64_json")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
BACKGROUNDS = ("auto", "opaque", "transparent")
MODERATIONS = ("auto", "low")
MAX_USER_LENGTH = 256
MAX_PARTIAL_IMAGES = 3


@dataclass(frozen=True)
class GenerationPlan:
    """A checked request: what to ask the provider for and what to hand back."""

    route: Route
    job: ImageJob  # in the served model's terms; `images` are filled in after loading
    size: Size | None  # what the client gets; None: as the model made it
    response_format: str
    output_format: str
    output_compression: int | None
    image_sources: tuple[str | bytes, ...]
    mask_source: str | bytes | None = None
    identity: str = ""  # what makes two requests one, for idempotency keys (`identity`)


def plan(request: ImageRequest, route: Route) -> GenerationPlan:
    """Check every field of `request` against the requested model; raise InvalidArgument."""
    spec = route.requested
    prompt = _prompt(request.prompt, spec)
    n = _n(request)
    size = _size(request.size or spec.default_size, spec)
    response_format = _one_of("response_format",
                              request.response_format or spec.default_response_format,
                              RESPONSE_FORMATS)
    quality = _choice("quality", request.quality, spec.qualities, spec.default_quality,
                      spec) or spec.default_quality
    style = _choice("style", request.style, spec.styles, spec.default_style, spec)
    output_format = _output_format(request.output_format, spec)
    compression = _compression(request, output_format)
    background = _background(request.background, output_format, spec)
    moderation = _choice("moderation", request.moderation, spec.moderations, None, spec)
    images = _image_sources(request, spec)
    mask = _mask(request, spec)
    fidelity = _choice("input_fidelity", request.input_fidelity, spec.input_fidelities, None,
                       spec)
    if fidelity and not images:
        raise InvalidArgument("input_fidelity applies to edits only; give image too",
                              param="input_fidelity", reason="UNSUPPORTED_VALUE")
    if len(request.user) > MAX_USER_LENGTH:
        raise InvalidArgument(f"user must be at most {MAX_USER_LENGTH} characters",
                              param="user", reason="STRING_ABOVE_MAX_LENGTH")
    job = ImageJob(prompt=prompt, model=spec, n=n, size=size, quality=quality, style=style,
                   output_format=output_format, output_compression=compression,
                   background=background, moderation=moderation, user=request.user or None,
                   partial_images=_partial_images(request), input_fidelity=fidelity)
    same = identity(job, response_format, images, mask)
    if route.translated:
        job = _translate(job, route.served)
    return GenerationPlan(route=route, job=job, size=size, response_format=response_format,
                          output_format=output_format, output_compression=compression,
                          image_sources=images, mask_source=mask, identity=same)


# Long: the list of what makes a request, with the reasons its defaults are what they are.
def identity(job: ImageJob, response_format: str, sources: tuple[str | bytes, ...],
             mask: str | bytes | None = None) -> str:
    """What makes two generations the same request, for idempotency keys: every field as
    planned in the requested model's terms, defaults filled in (the contract's, per model:
    no model is the server's default, no n is 1, no size, quality or style the model's,
    no response_format the model's, no output_format the model's first, no background or
    moderation `auto`; output_compression has no default), so a field left out and the
    same field sent with its default are one request. How the answer is told (stream,
    partial_images) and where it is served from (successors) are not part of it. Uploaded
    files (bytes) count by their content."""
    digest = hashlib.sha256()
    background, moderation = ({None: None, "auto": None}.get(v, v)
                              for v in (job.background, job.moderation))
    for value in (job.model.name, job.prompt, job.n, str(job.size), job.quality, job.style,
                  job.output_format, job.output_compression, background, moderation,
                  job.user, response_format, job.input_fidelity, mask, *sources):
        text = value if isinstance(value, bytes) else repr(value).encode()
        digest.update(len(text).to_bytes(8, "big") + text)
    return digest.hexdigest()


def _prompt(prompt: str, spec: ModelSpec) -> str:
    text = prompt.strip()
    if not text:
        raise InvalidArgument("prompt is required and must not be empty", param="prompt",
                              reason="MISSING_REQUIRED_PARAMETER")
    if len(prompt) > spec.prompt_limit:
        raise InvalidArgument(
            f"prompt is {len(prompt)} characters; {spec.name} takes at most {spec.prompt_limit}",
            param="prompt", reason="STRING_ABOVE_MAX_LENGTH")
    return text


def _n(request: ImageRequest) -> int:
    if request.n is None:
        return 1
    if not 1 <= request.n <= MAX_N:
        raise InvalidArgument(f"n must be between 1 and {MAX_N}; got {request.n}", param="n",
                              reason="INTEGER_BELOW_MIN_VALUE" if request.n < 1
                              else "INTEGER_ABOVE_MAX_VALUE")
    return request.n


def _partial_images(request: ImageRequest) -> int:
    if request.partial_images is None:
        return 0
    if not 0 <= request.partial_images <= MAX_PARTIAL_IMAGES:
        raise InvalidArgument(f"partial_images must be between 0 and {MAX_PARTIAL_IMAGES}; "
                              f"got {request.partial_images}", param="partial_images",
                              reason="INTEGER_BELOW_MIN_VALUE" if request.partial_images < 0
                              else "INTEGER_ABOVE_MAX_VALUE")
    return request.partial_images


def refuse_stream_fields(request: ImageRequest, streaming_call: str) -> None:
    """For calls that do not stream: `stream: true` and previews belong to `streaming_call`."""
    if request.stream:
        raise InvalidArgument(f"stream: true is served by {streaming_call}; this call answers "
                              "once", param="stream", reason="UNSUPPORTED_VALUE")
    if request.partial_images:
        raise InvalidArgument(f"partial_images needs a stream ({streaming_call})",
                              param="partial_images", reason="UNSUPPORTED_VALUE")


def _size(text: str, spec: ModelSpec) -> Size | None:
    if text == "auto" and "auto" in spec.sizes:
        return None
    size = Size.parse(text)
    if size is None:
        raise InvalidArgument(f"size must be WIDTHxHEIGHT, like 1024x1024; got '{text}'",
                              param="size")
    problem = spec.size_problem(size)
    if problem:
        raise InvalidArgument(f"size {text} is not supported by {spec.name}: {problem}",
                              param="size", reason="UNSUPPORTED_SIZE")
    return size


def _one_of(param: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidArgument(f"{param} must be one of {', '.join(allowed)}; got '{value}'",
                              param=param)
    return value


def _choice(param: str, value: str, allowed: tuple[str, ...], default: str | None,
            spec: ModelSpec) -> str | None:
    """A model-dependent option: empty means the model's default."""
    if not value:
        return default
    if value not in allowed:
        supported = (f"supports {', '.join(allowed)}" if allowed
                     else f"does not take {param}")
        raise InvalidArgument(f"{param} '{value}' is not supported: {spec.name} {supported}",
                              param=param, reason="UNSUPPORTED_VALUE")
    return value


def _output_format(value: str, spec: ModelSpec) -> str:
    if value:
        _one_of("output_format", value, OUTPUT_FORMATS)
    return _choice("output_format", value, spec.output_formats, spec.output_formats[0],
                   spec) or "png"


def _compression(request: ImageRequest, output_format: str) -> int | None:
    if request.output_compression is None:
        return None
    if not 0 <= request.output_compression <= 100:
        raise InvalidArgument("output_compression must be between 0 and 100",
                              param="output_compression")
    if output_format not in ("jpeg", "webp"):
        raise InvalidArgument("output_compression applies to jpeg and webp only",
                              param="output_compression", reason="UNSUPPORTED_VALUE")
    return request.output_compression


def _background(value: str, output_format: str, spec: ModelSpec) -> str | None:
    if value:
        _one_of("background", value, BACKGROUNDS)
    background = _choice("background", value, spec.backgrounds, None, spec)
    if background == "transparent" and output_format == "jpeg":
        raise InvalidArgument("a transparent background needs output_format png or webp",
                              param="background", reason="UNSUPPORTED_VALUE")
    return background


def _image_sources(request: ImageRequest, spec: ModelSpec) -> tuple[str | bytes, ...]:
    sources = tuple(request.image)
    if not sources:
        return ()
    if not spec.edits and request.variation:
        raise InvalidArgument(f"{spec.name} cannot make variations (it cannot edit images); "
                              "name a model with edits: true in GET /api/models",
                              param="model", reason="UNSUPPORTED_VALUE")
    if not spec.edits:
        raise InvalidArgument(f"{spec.name} cannot edit images; leave image out",
                              param="image", reason="UNSUPPORTED_VALUE")
    if len(sources) > spec.max_input_images:
        raise InvalidArgument(
            f"{spec.name} takes at most {spec.max_input_images} input image(s)",
            param="image", reason="TOO_MANY_IMAGES")
    if any(not s.strip() for s in sources):
        raise InvalidArgument("image entries must not be empty", param="image")
    return sources


def _mask(request: ImageRequest, spec: ModelSpec) -> str | bytes | None:
    if request.mask is None:
        return None
    if not request.image:
        raise InvalidArgument("a mask needs the image it masks; give image too", param="mask",
                              reason="MISSING_REQUIRED_PARAMETER")
    if not spec.masks:
        raise InvalidArgument(f"{spec.name} cannot honour a mask; leave mask out (the models "
                              "that can say masks: true in GET /api/models)", param="mask",
                              reason="UNSUPPORTED_VALUE")
    if not request.mask.strip():
        raise InvalidArgument("mask must not be empty", param="mask")
    return request.mask


def _translate(job: ImageJob, served: ModelSpec) -> ImageJob:
    """The same job in the successor's terms (sizes, qualities, style as a prompt hint)."""
    requested = job.model
    size = job.size
    if size is not None and served.size_problem(size):
        if served.size_rule is None:
            raise ValueError(f"{served.name} has no size rule to translate {size} into")
        size = served.size_rule.nearest(size)
    quality = requested.quality_map.get(job.quality or "", served.default_quality)
    hint = requested.style_hints.get(job.style or "")
    return ImageJob(
        prompt=f"{job.prompt}\n\n{hint}" if hint else job.prompt,
        model=served, n=job.n, size=size, quality=quality,
        output_format=job.output_format, output_compression=job.output_compression,
        background=job.background if job.background in served.backgrounds else None,
        moderation=job.moderation if job.moderation in served.moderations else None,
        user=job.user, partial_images=job.partial_images,
        input_fidelity=job.input_fidelity if job.input_fidelity in served.input_fidelities
        else None,
    )
