"""The whole path, as users take it: the openai SDK and raw HTTP through Envoy, and the
generated gRPC stub through Envoy and directly, against the local renderer."""

from __future__ import annotations

import base64
import io
import os

import grpc
import httpx
import jsonschema
import openai
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from aigne.hub.v1 import image_service_pb2 as pb
from tests.conftest import GRPC_AUTH, open_image
from tests.openai_schema import IMAGES_RESPONSE
from tests.stack import TEST_KEY, Stack

PROMPT = "A photorealistic image of a cat programming on a laptop"


def assert_images_response(body: dict, n: int) -> None:
    """The answer is OpenAI's ImagesResponse, with exactly n images and no empty fields."""
    jsonschema.validate(body, IMAGES_RESPONSE)
    assert type(body["created"]) is int
    assert len(body["data"]) == n
    for item in body["data"]:
        assert ("url" in item) != ("b64_json" in item), item.keys()
        assert all(value != "" for value in item.values())


def test_openai_sdk_url_serves_the_png_without_a_key(client: openai.OpenAI, stack: Stack,
                                                     out_dir) -> None:
    result = client.images.generate(prompt=PROMPT, size="512x512")

    assert isinstance(result.created, int)
    assert len(result.data) == 1
    url = result.data[0].url
    assert url and url.startswith(f"{stack.base_url}/api/images/files/img_")
    fetched = httpx.get(url)  # no Authorization: the signature is the capability
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/png"
    image = open_image(fetched.content)
    assert (image.format, image.size) == ("PNG", (512, 512))
    (out_dir / "generated.png").write_bytes(fetched.content)


def test_openai_sdk_b64_json_decodes_to_the_png(client: openai.OpenAI) -> None:
    result = client.images.generate(prompt=PROMPT, size="256x256", response_format="b64_json")

    image = open_image(base64.b64decode(result.data[0].b64_json or ""))
    assert (image.format, image.size) == ("PNG", (256, 256))
    assert result.data[0].url is None


def test_ten_large_b64_images_arrive_whole_through_envoy(client: openai.OpenAI) -> None:
    result = client.images.generate(prompt=PROMPT, n=10, size="1024x1024",
                                    response_format="b64_json")

    files = [base64.b64decode(item.b64_json or "") for item in result.data]
    assert len(files) == 10
    assert all(open_image(f).size == (1024, 1024) for f in files)
    assert len(set(files)) == 10, "each of the n images differs"


def test_raw_answer_is_openai_images_response(http: httpx.Client) -> None:
    for response_format, n in (("url", 3), ("b64_json", 2)):
        answer = http.post("/api/images/generations", json={
            "prompt": PROMPT, "n": n, "size": "256x256", "response_format": response_format})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["x-model-served"] == "local"
        assert "grpc-status" not in answer.headers
        assert_images_response(answer.json(), n)


def test_seed_example_without_model_returns_an_image(http: httpx.Client) -> None:
    """The seed's first curl example, as written, on a machine with no provider key."""
    answer = http.post("/api/images/generations",
                       json={"prompt": PROMPT, "n": 1, "size": "1024x1024"})
    assert answer.status_code == 200, answer.text
    url = answer.json()["data"][0]["url"]
    assert open_image(httpx.get(url).content).size == (1024, 1024)


def test_stub_answers_what_rest_answers(stub, http: httpx.Client) -> None:
    request = {"prompt": "a lighthouse at dawn", "n": 2, "size": "320x200",
               "response_format": "b64_json"}
    rest = http.post("/api/images/generations", json=request).json()

    reply, call = stub.Generate.with_call(pb.GenerateRequest(**request), metadata=GRPC_AUTH,
                                          timeout=60)

    assert [item.b64_json for item in reply.data] == [
        base64.b64decode(item["b64_json"]) for item in rest["data"]]
    assert reply.created > 0 and reply.output_format == "png"
    assert ("x-model-served", "local") in tuple(call.initial_metadata())


def test_stub_url_answer(stub) -> None:
    reply = stub.Generate(pb.GenerateRequest(prompt="a red kite", size="64x48"),
                          metadata=GRPC_AUTH, timeout=60)
    assert reply.data[0].WhichOneof("content") == "url"
    assert open_image(httpx.get(reply.data[0].url).content).size == (64, 48)


@pytest.mark.parametrize(("output_format", "content_type", "pil_format"), [
    ("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")])
def test_output_format_sets_file_type_and_content_type(http: httpx.Client, output_format: str,
                                                       content_type: str, pil_format: str) -> None:
    body = {"prompt": PROMPT, "size": "128x128", "output_format": output_format,
            "background": "opaque"}
    if output_format != "png":
        body["output_compression"] = 50
    answer = http.post("/api/images/generations", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["output_format"] == output_format
    fetched = httpx.get(answer.json()["data"][0]["url"])
    assert fetched.headers["content-type"] == content_type
    assert open_image(fetched.content).format == pil_format


def test_transparent_background_has_alpha(http: httpx.Client) -> None:
    answer = http.post("/api/images/generations", json={
        "prompt": PROMPT, "size": "256x256", "background": "transparent",
        "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["background"] == "transparent"
    image = open_image(base64.b64decode(answer.json()["data"][0]["b64_json"]))
    assert image.mode == "RGBA" and image.getchannel("A").getextrema()[0] == 0


def noise_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(
        out, "PNG", compress_level=0)
    return out.getvalue()


def test_edit_with_megabytes_of_base64_input(client: openai.OpenAI, stub) -> None:
    source = noise_png(1400, 1400)  # ~5.9 MB, ~7.8 MB as base64
    assert len(source) > 5_000_000
    encoded = base64.b64encode(source).decode()

    rest = client.images.generate(prompt="paint a boat on it", size="512x512",
                                  response_format="b64_json",
                                  extra_body={"image": f"data:image/png;base64,{encoded}"})
    plain = client.images.generate(prompt="paint a boat on it", size="512x512",
                                   response_format="b64_json")
    reply = stub.Generate(pb.GenerateRequest(prompt="paint a boat on it", size="512x512",
                                             response_format="b64_json", image=[encoded]),
                          metadata=GRPC_AUTH, timeout=120)

    edited = base64.b64decode(rest.data[0].b64_json or "")
    assert open_image(edited).size == (512, 512)
    assert edited != base64.b64decode(plain.data[0].b64_json or ""), "the input was used"
    assert reply.data[0].b64_json == edited, "both doors made the same edit"


def test_grpc_error_carries_rich_status(stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(pb.GenerateRequest(prompt="x", n=11), metadata=GRPC_AUTH, timeout=30)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)
    assert status is not None
    infos, violations = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    kinds = {detail.type_url.rsplit("/", 1)[-1]: detail for detail in status.details}
    kinds["google.rpc.ErrorInfo"].Unpack(infos)
    kinds["google.rpc.BadRequest"].Unpack(violations)
    assert infos.reason == "INTEGER_ABOVE_MAX_VALUE" and infos.domain == "aigne.dev"
    assert violations.field_violations[0].field == "n"
    assert "x-hub-error" not in dict(error.trailing_metadata() or ()), "REST-only metadata"


def test_the_server_runs_on_uvloop_unless_told_otherwise(stack: Stack, tmp_path) -> None:
    """AIGNE_HUB_EVENT_LOOP: uvloop by default (docs/performance.md), asyncio's own loop
    when asked; both serve."""
    [serving] = [line for line in stack.log_lines() if line.get("event") == "serving"]
    assert serving["event_loop"] == "uvloop"
    plain = Stack(tmp_path, {"AIGNE_HUB_EVENT_LOOP": "asyncio"}).start()
    try:
        [serving] = [line for line in plain.log_lines() if line.get("event") == "serving"]
        assert serving["event_loop"] == "asyncio"
        answer = httpx.post(f"{plain.base_url}/api/images/generations", timeout=30,
                            headers={"Authorization": f"Bearer {TEST_KEY}"},
                            json={"model": "local", "prompt": PROMPT, "size": "256x256"})
        assert answer.status_code == 200, answer.text
    finally:
        plain.stop()
