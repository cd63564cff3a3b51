"""Calls ImageService.Generate over gRPC with the installable stubs (`pip install ./gen/python`):
two images as URLs, two as bytes, then a bad request (n=11) whose google.rpc.Status details it
prints. Needs nothing but what aigne-hub-proto installs (grpcio, protobuf,
googleapis-common-protos).

    python client.py [HOST:PORT] [API_KEY]

The target defaults to $AIGNE_HUB_TARGET or 127.0.0.1:8080 (Envoy; the server's own port,
50051 by default, works too), the key to $AIGNE_HUB_API_KEY.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import urllib.request

import grpc
from google.rpc import error_details_pb2, status_pb2

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc as pb_grpc

PROMPT = "a lighthouse at dawn"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def generate(stub: pb_grpc.ImageServiceStub, auth: list[tuple[str, str]], fmt: str) -> None:
    """Asks for two 256x256 images in one response format and reads each of them."""
    reply, call = stub.Generate.with_call(
        pb.GenerateRequest(prompt=PROMPT, n=2, size="256x256", response_format=fmt),
        metadata=auth, timeout=120)
    model = dict(call.initial_metadata()).get("x-model-served", "")
    print(f"generate format={fmt} images={len(reply.data)} model={model}")
    for index, image in enumerate(reply.data):
        data = fetch(image.url) if fmt == "url" else image.b64_json
        width, height = png_size(data)
        print(f"image format={fmt} index={index} type=png width={width} height={height} "
              f"bytes={len(data)}")


def bad_request(stub: pb_grpc.ImageServiceStub, auth: list[tuple[str, str]]) -> None:
    """Sends n=11 and prints what the error's google.rpc.Status details say."""
    try:
        stub.Generate(pb.GenerateRequest(prompt=PROMPT, n=11), metadata=auth, timeout=60)
    except grpc.RpcError as error:
        print(f"error code={error.code().name} message={json.dumps(error.details())}")
        for detail in rich_status(error).details:
            info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            if detail.Unpack(info):
                print(f"error_info reason={info.reason} domain={info.domain}")
            elif detail.Unpack(bad):
                for violation in bad.field_violations:
                    print(f"field_violation field={violation.field} "
                          f"description={json.dumps(violation.description)}")
        return
    raise SystemExit("n=11 was accepted")


def rich_status(error: grpc.RpcError) -> status_pb2.Status:
    """The google.rpc.Status a server sends in the `grpc-status-details-bin` trailer
    (what grpcio-status's rpc_status.from_call does)."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return status_pb2.Status()


def fetch(url: str) -> bytes:
    """The signed URL needs no API key."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (checked above)
        return response.read()


def png_size(data: bytes) -> tuple[int, int]:
    """Checks the PNG signature and reads the size from the IHDR chunk."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("AIGNE_HUB_TARGET",
                                                                   "127.0.0.1:8080")
    key = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("AIGNE_HUB_API_KEY", "")
    auth = [("authorization", f"Bearer {key}")]
    print(f"target {target}")
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        for fmt in ("url", "b64_json"):
            generate(stub, auth, fmt)
        bad_request(stub, auth)


if __name__ == "__main__":
    main()
