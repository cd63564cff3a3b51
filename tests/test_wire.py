"""Answers written once from the images' bytes say exactly what the plain protobuf and JSON
mappings say."""

from __future__ import annotations

import os

import orjson
from google.api import httpbody_pb2

from aigne.hub.v1 import image_service_pb2 as pb
from service.contract import json_codec
from service.rpc import wire

PAYLOADS = [os.urandom(300_001), None, b"", os.urandom(7)]


def full_and_parts() -> tuple[pb.GenerateResponse, pb.GenerateResponse]:
    usage = pb.ImageUsage(total_tokens=3, input_tokens=1, output_tokens=2,
                          input_tokens_details=pb.TokenDetails(text_tokens=1))
    images = [pb.Image(b64_json=PAYLOADS[0], revised_prompt="a \"quoted\" b64:x:0 prompt"),
              pb.Image(url="http://127.0.0.1/api/images/files/img_x.png?expires=1&signature=s"),
              pb.Image(b64_json=b""), pb.Image(b64_json=PAYLOADS[3])]
    full = pb.GenerateResponse(created=1795770000, data=images, usage=usage,
                               output_format="png", background="opaque")
    parts = pb.GenerateResponse()
    parts.CopyFrom(full)
    for image in parts.data:
        image.ClearField("b64_json")
    return full, parts


def test_grpc_answer_is_the_message() -> None:
    full, parts = full_and_parts()
    written = wire.grpc_answer(parts, PAYLOADS)
    assert pb.GenerateResponse.FromString(written.data) == full
    assert len(written.data) == full.ByteSize()


def test_rest_answer_is_the_json_mapping_in_an_http_body() -> None:
    full, parts = full_and_parts()
    body = httpbody_pb2.HttpBody.FromString(wire.rest_answer(parts, PAYLOADS).data)
    assert body.content_type == "application/json"
    assert orjson.loads(body.data) == orjson.loads(json_codec.encode(full))


def test_serializer_lets_wire_through() -> None:
    write = wire.serializer(pb.GenerateResponse.SerializeToString)
    assert write is not None
    assert write(wire.Wire(b"\x08\x01")) == b"\x08\x01"
    assert write(pb.GenerateResponse(created=1)) == b"\x08\x01"
