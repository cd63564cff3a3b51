"""Image answers written once, straight from the images' bytes: the gRPC door's
GenerateResponse and the REST door's HttpBody of JSON.

A 10-image `b64_json` answer is tens of megabytes. Built the plain way its image bytes are
copied into protobuf messages, then (REST) into base64 strings, a JSON document, an HttpBody
and that HttpBody's serialization, several of them alive at once. Here each answer is
written into one buffer of its exact size, from the response message without its image
bytes (the small parts, made by protobuf and orjson as usual) and the bytes themselves, one
image at a time. The result is a `Wire`: bytes already in protobuf wire format, which the
interceptor's serializer passes to gRPC untouched.

Protobuf allows this: a message's encoding is the concatenation of its fields' encodings,
and a field holding a message or bytes is its tag, its length as a varint, then its bytes.
"""

from __future__ import annotations

import base64
import io
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from aigne.hub.v1 import image_service_pb2 as pb
from service.contract import json_codec

JSON = b"application/json"
# Field tags (field number << 3 | wire type 2, length-delimited) of the fields written here.
DATA = b"\x12"  # GenerateResponse.data = 2, Image.b64_json = 2, HttpBody.data = 2
CONTENT_TYPE = b"\x0a"  # HttpBody.content_type = 1


@dataclass(frozen=True)
class Wire:
    """A message already in protobuf wire format."""

    data: bytes


def serializer(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """`serialize`, letting a Wire through as it is."""
    if serialize is None:
        return None

    def write(message: Any) -> bytes:
        return message.data if isinstance(message, Wire) else serialize(message)

    return write


def grpc_answer(response: pb.GenerateResponse, payloads: Sequence[bytes | None]) -> Wire:
    """`response` with `payloads[i]` as the `b64_json` bytes of `response.data[i]` (which
    holds everything else of that image), as GenerateResponse wire bytes."""
    head = pb.GenerateResponse(created=response.created).SerializeToString()
    rest = pb.GenerateResponse()
    rest.CopyFrom(response)
    rest.ClearField("created")
    rest.ClearField("data")
    pieces: list[bytes] = [head]
    for image, payload in zip(response.data, payloads, strict=True):
        others = image.SerializeToString()
        if payload is None:
            pieces += [DATA, _varint(len(others)), others]
            continue
        field = [DATA, _varint(len(payload)), payload]
        pieces += [DATA, _varint(sum(map(len, field)) + len(others)), *field, others]
    pieces.append(rest.SerializeToString())
    return Wire(_join(pieces))


def rest_answer(response: pb.GenerateResponse, payloads: Sequence[bytes | None]) -> Wire:
    """The JSON of `response` (json_codec's mapping), with `payloads[i]` in standard base64
    as `data[i].b64_json`, as the wire bytes of an HttpBody of content type JSON."""
    value = json_codec.to_json_value(response)
    nonce = secrets.token_hex(8)
    markers = []
    for i, (item, payload) in enumerate(zip(value["data"], payloads, strict=True)):
        if payload is not None:
            placeholder = f"b64:{nonce}:{i}"
            value["data"][i] = {"b64_json": placeholder, **item}
            markers.append((orjson.dumps(placeholder), payload))
    document = orjson.dumps(value)
    pieces: list[bytes | _Base64] = []
    for marker, payload in markers:  # each marker is a JSON string, quotes included
        before, document = document.split(marker, 1)
        pieces += [before, b'"', _Base64(payload), b'"']
    pieces.append(document)
    size = sum(len(piece) for piece in pieces)
    head = [CONTENT_TYPE, _varint(len(JSON)), JSON, DATA, _varint(size)]
    return Wire(_join([*head, *pieces]))


class _Base64:
    """An image's standard base64, encoded only when it is written."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __len__(self) -> int:
        return (len(self.data) + 2) // 3 * 4

    def encode(self) -> bytes:
        return base64.b64encode(self.data)


def _join(pieces: Sequence[bytes | _Base64]) -> bytes:
    """The pieces written into one buffer of their exact size (BytesIO.getvalue gives that
    buffer itself, not a copy, when it is exactly full)."""
    size = sum(len(piece) for piece in pieces)
    out = io.BytesIO()
    if size:
        out.seek(size - 1)
        out.write(b"\0")
        out.seek(0)
    for piece in pieces:
        out.write(piece.encode() if isinstance(piece, _Base64) else piece)
    assert out.tell() == size
    return out.getvalue()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
