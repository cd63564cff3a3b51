"""Malformed input the adversarial pass of issue 18 turned into 500s, each now a 4xx with
the OpenAI-shaped JSON body on the REST door and the matching status on gRPC: a known field
nested hundreds of levels deep, image URLs no parser likes, console paths too long for the
file system or holding a NUL."""

from __future__ import annotations

import grpc
import httpx
import pytest

from aigne.hub.v1 import console_service_pb2 as console_pb
from aigne.hub.v1 import console_service_pb2_grpc as console_grpc
from aigne.hub.v1 import image_service_pb2 as pb
from tests.conftest import GRPC_AUTH
from tests.stack import Stack
from tests.test_bad_input import assert_error

GENERATIONS = "/api/images/generations"
BAD_URLS = ["http://[::1/x", "http://a..b/", f"http://{'a' * 64}.example/x.png",
            f"http://{'a' * 300}/x.png", "http://[]/x.png", "https://[v9.x]/", "http://.",
            "http://x:99999/a.png", "http://x:-1/a.png", "http://%zz/a.png",
            "http://a\u3002\u3002b/x.png", "http://xn--/a.png"]


def nested(field: str, depth: int) -> bytes:
    return (f'{{"prompt": "x", "{field}": ' + "[" * depth + "]" * depth + "}").encode()


@pytest.mark.parametrize("depth", [254, 255, 256, 600, 1023])
@pytest.mark.parametrize("field", ["n", "size", "image", "user"])
def test_a_known_field_nested_deep_is_400(http: httpx.Client, field: str, depth: int) -> None:
    answer = http.post(GENERATIONS, content=nested(field, depth),
                       headers={"content-type": "application/json"})
    assert_error(answer, 400, field, "invalid_type")


def test_nesting_past_the_decoder_is_400_too(http: httpx.Client) -> None:
    answer = http.post(GENERATIONS, content=nested("n", 1100),
                       headers={"content-type": "application/json"})
    assert_error(answer, 400, None, "invalid_json")


@pytest.mark.parametrize("url", BAD_URLS)
def test_unparseable_image_urls_are_400_on_both_doors(http: httpx.Client, stub,
                                                      url: str) -> None:
    body = assert_error(http.post(GENERATIONS, json={"model": "local", "prompt": "x",
                                                     "image": url}), 400, "image")
    assert body["code"] in ("invalid_image_url", "invalid_image"), body
    with pytest.raises(grpc.RpcError) as failed:
        stub.Generate(pb.GenerateRequest(model="local", prompt="x", image=[url]),
                      metadata=GRPC_AUTH, timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("path", ["a" * 256, "a/" * 200 + "x.js", "b" * 5000 + ".css",
                                  "%00", "index.html%00.js", "x%00/y"])
def test_odd_console_paths_are_json_404(stack: Stack, path: str) -> None:
    answer = httpx.get(f"{stack.base_url}/console/{path}", timeout=30)
    assert answer.status_code in (400, 404), answer.text
    assert_error(answer, answer.status_code, None)  # a message, a type, a code
    assert answer.headers.get("x-request-id"), answer.headers


@pytest.mark.parametrize("path", ["a" * 256, "c/" * 300, "index.html\x00.js", "\x00",
                                  "x" * 70_000])
def test_odd_console_paths_are_not_found_over_grpc(stack: Stack, path: str) -> None:
    with grpc.insecure_channel(stack.server_target) as channel:
        stub = console_grpc.ConsoleServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.GetConsoleAsset(console_pb.GetConsoleAssetRequest(path=path), timeout=30)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND, failed.value.details()
