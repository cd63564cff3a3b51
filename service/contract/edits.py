"""`POST /api/images/edits` (and `/variations`) as OpenAI defines them, read into the
pipeline's ImageRequest.

Two bodies are accepted, as OpenAI's API takes them:
- `multipart/form-data`: files `image` or `image[]` (one to 16), an optional file `mask`,
  every other GenerateRequest field as a text field (`n=2`, `stream=true`);
- JSON: `images: [{"image_url": ...}]`, `mask: {"image_url": ...}` (a URL or a data URL),
  the other fields as in GenerateRequest. `file_id` (OpenAI's Files API) is refused.

Uploaded files stay bytes all the way to the provider (no base64 round trip); the scalar
fields go through the same JSON rules as the generations door (json_codec). Anything wrong
is an InvalidArgument naming the field.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from aigne.hub.v1 import image_service_pb2 as pb
from service.contract import json_codec
from service.contract.images import image_request
from service.errors import InvalidArgument
from service.generation.request import ImageRequest

# The parser logs each malformed body at WARNING before it raises; the client's 400 says it.
logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)

MAX_IMAGES = 16
MAX_PARTS = 64
FILE_FIELDS = ("image", "image[]", "mask")
BOOLEANS = {"true": True, "false": False, "1": True, "0": False}
NOT_FORM_FIELDS = ("image", "mask")  # GenerateRequest fields an edit gives as files
# OpenAI's variation fields; others are ignored, as unknown JSON fields are.
VARIATION_FIELDS = ("image", "image[]", "model", "n", "size", "response_format", "user")
VARIATION_PROMPT = ("A variation of this image: the same subject, composition and style, "
                    "with new details.")


@dataclass
class Part:
    """One part of a multipart form: its field name, file name (None: a text field), bytes."""

    name: str
    filename: str | None
    content_type: str
    data: bytes


def edit_request(content_type: str, body: bytes) -> ImageRequest:
    """The edit asked for by a body of `content_type`, as the pipeline's ImageRequest."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        return _from_form(read_form(content_type, body))
    if kind in ("application/json", ""):
        return _from_json(json_codec.load_object(body))
    if kind == "application/x-www-form-urlencoded":  # text fields only: it cannot hold files
        pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        return _from_form([Part(k, None, "", v.encode()) for k, v in pairs])
    raise InvalidArgument(f"POST /images/edits takes multipart/form-data or application/json, "
                          f"not {kind}", reason="UNSUPPORTED_CONTENT_TYPE")


def variation_request(content_type: str, body: bytes) -> ImageRequest:
    """A variation (`POST /images/variations`): one image, edited with VARIATION_PROMPT."""
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise InvalidArgument("POST /images/variations takes multipart/form-data",
                              reason="UNSUPPORTED_CONTENT_TYPE")
    parts = [p for p in read_form(content_type, body) if p.name in VARIATION_FIELDS]
    asked = _from_form(parts)
    if len(asked.image) > 1:
        raise InvalidArgument("a variation takes one image", param="image",
                              reason="TOO_MANY_IMAGES")
    return replace(asked, prompt=VARIATION_PROMPT, variation=True)


def read_form(content_type: str, body: bytes) -> list[Part]:
    """The parts of a `multipart/form-data` body, or InvalidArgument when it is malformed."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise _malformed("the Content-Type has no boundary")
    reader = _FormReader()
    parser = MultipartParser(boundary, reader.callbacks())
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise _malformed(str(exc).split("\n", 1)[0]) from None
    if parser.state != MultipartState.END:
        raise _malformed("the body ends before its closing boundary")
    return reader.parts


class _FormReader:
    """Collects the parts that MultipartParser reports through its callbacks."""

    def __init__(self) -> None:
        self.parts: list[Part] = []
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._data: list[bytes] = []

    def callbacks(self) -> Any:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_part_data": self._part_data, "on_part_end": self._end}

    def _begin(self) -> None:
        self._headers, self._data = {}, []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field, self._value = bytearray(), bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(data[start:end])

    def _end(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise _malformed(f"more than {MAX_PARTS} parts")
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if name is None:
            raise _malformed("a part has no Content-Disposition name")
        filename = options.get(b"filename")
        self.parts.append(Part(
            name=name.decode("utf-8", "replace"),
            filename=None if filename is None else filename.decode("utf-8", "replace"),
            content_type=self._headers.get(b"content-type", b"").decode("latin-1"),
            data=b"".join(self._data)))


def _from_form(parts: list[Part]) -> ImageRequest:
    fields: dict[str, Any] = {}
    images: list[bytes] = []
    mask: bytes | None = None
    for part in parts:
        if part.name in ("image", "image[]"):
            images.append(part.data)
        elif part.name == "mask":
            if mask is not None:
                raise InvalidArgument("mask is given twice; send one", param="mask")
            mask = part.data
        elif part.name not in NOT_FORM_FIELDS:
            fields[part.name] = _text(part)
    return _request(fields, tuple(images), mask, files=True)


def _text(part: Part) -> Any:
    if part.filename is not None:
        raise InvalidArgument(f"{part.name} must be a text field, not a file", param=part.name)
    try:
        text = part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{part.name} is not UTF-8 text", param=part.name) from None
    if part.name in ("stream",):
        if text.strip().lower() not in BOOLEANS:
            raise InvalidArgument(f"{part.name} must be true or false; got '{text[:20]}'",
                                  param=part.name, reason="INVALID_TYPE")
        return BOOLEANS[text.strip().lower()]
    return text


def _from_json(obj: dict[str, Any]) -> ImageRequest:
    images = tuple(_image_url(item, f"images[{i}]")
                   for i, item in enumerate(_list(obj.pop("images", None))))
    mask = obj.pop("mask", None)  # (`image`, the generations door's field, is read too)
    return _request(obj, images, None if mask is None else _image_url(mask, "mask"),
                    files=False)


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument('images must be a list of {"image_url": ...} objects',
                              param="images", reason="INVALID_TYPE")
    return value


def _image_url(item: Any, where: str) -> str:
    param = "mask" if where == "mask" else "images"
    if isinstance(item, str) and item.strip():  # the plain form GenerateRequest takes
        return item
    if isinstance(item, dict) and item.get("file_id") is not None:
        raise InvalidArgument(f"{where}.file_id is not supported here (this server keeps no "
                              "files); send image_url: an http(s) URL or a data URL",
                              param=param, reason="UNSUPPORTED_VALUE")
    url = item.get("image_url") if isinstance(item, dict) else None
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument(f'{where} must be {{"image_url": "<http(s) URL or data URL>"}}',
                              param=param, reason="INVALID_TYPE")
    return url


def _request(fields: dict[str, Any], images: tuple[str | bytes, ...],
             mask: str | bytes | None, *, files: bool) -> ImageRequest:
    message = json_codec.from_object(fields, pb.GenerateRequest)
    images += tuple(message.image)
    if not images:
        raise InvalidArgument("image is required: give one to 16 source images"
                              + (" as files `image` or `image[]`" if files else
                                 ' in images: [{"image_url": ...}]'),
                              param="image", reason="MISSING_REQUIRED_PARAMETER")
    if len(images) > MAX_IMAGES:
        raise InvalidArgument(f"at most {MAX_IMAGES} images; got {len(images)}", param="image",
                              reason="TOO_MANY_IMAGES")
    # Its idempotency key's identity is the planned request's, files by their content
    # (generation/validation.py `identity`).
    return replace(image_request(message), image=images, mask=mask)


def _malformed(why: str) -> InvalidArgument:
    return InvalidArgument(f"The multipart form is malformed: {why}.", reason="INVALID_FORM")
