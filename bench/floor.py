"""The floor: a grpc.aio server with no logic behind the same Envoy config, answering the
bytes our server answers. What this architecture costs before we add anything.

It implements ImageService's two generation methods (the REST door's GenerateOrStreamHttp,
one JSON message when the request does not stream, and the gRPC door's Generate) and answers
every call with bytes recorded from our server: no interceptor, no key, no provider, no
validation.

    python -m bench.floor PORT ANSWERS_DIR
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.api import httpbody_pb2

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc as pb_grpc

BIG = (b'"n":10', b'"n": 10')


class Floor(pb_grpc.ImageServiceServicer):
    def __init__(self, answers: Path) -> None:
        self._rest = (answers / "rest-small.json").read_bytes()
        self._rest_big = (answers / "rest-big.json").read_bytes()
        self._grpc = pb.GenerateResponse.FromString((answers / "grpc-small.bin").read_bytes())
        self._grpc_big = pb.GenerateResponse.FromString((answers / "grpc-big.bin").read_bytes())

    async def GenerateOrStreamHttp(self, request: pb.GenerateOrStreamHttpRequest,
                                   context: object) -> AsyncIterator[httpbody_pb2.HttpBody]:
        big = any(marker in request.body.data for marker in BIG)
        yield httpbody_pb2.HttpBody(content_type="application/json",
                                    data=self._rest_big if big else self._rest)

    async def Generate(self, request: pb.GenerateRequest, context: object) -> pb.GenerateResponse:
        return self._grpc_big if request.n == 10 else self._grpc


async def serve(port: int, answers: Path) -> None:
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 1 << 30),
                                      ("grpc.max_receive_message_length", 1 << 30)])
    pb_grpc.add_ImageServiceServicer_to_server(Floor(answers), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), Path(sys.argv[2])))
