"""POST /api/images/edits as OpenAI defines it: the openai SDK's `images.edit` (multipart,
`image` or `image[]`, a mask), OpenAI's JSON form, clear 400s for what is wrong; masks over
gRPC too. The local renderer honours a mask; OpenAI gets it through its own edit call."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from aigne.hub.v1 import image_service_pb2 as pb
from tests.conftest import GRPC_AUTH, http_client, open_image, openai_client
from tests.fakes.images import picture
from tests.stack import Stack
from tests.test_bad_input import assert_error

EDITS = "/api/images/edits"
RED = (255, 0, 0, 255)


def png(width: int, height: int, color: tuple[int, ...] = RED, mode: str = "RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), color[:len(mode)]).save(out, "PNG")
    return out.getvalue()


def half_mask(width: int, height: int) -> bytes:
    """Opaque (kept) on the left half, transparent (edited) on the right half."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (width // 2, 0, width, height))
    out = io.BytesIO()
    mask.save(out, "PNG")
    return out.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_openai_sdk_edit_with_a_mask_keeps_what_the_mask_covers(stack: Stack) -> None:
    with openai_client(stack) as client:
        result = client.images.edit(
            image=("red.png", png(64, 64), "image/png"), mask=("mask.png", half_mask(64, 64),
                                                               "image/png"),
            prompt="paint the right half", model="local", size="64x64",
            response_format="b64_json")
    image = open_image(base64.b64decode(result.data[0].b64_json or "")).convert("RGBA")
    assert image.size == (64, 64)
    assert all(image.getpixel((x, y)) == RED for x in range(0, 30, 3) for y in range(0, 64, 7))
    assert any(image.getpixel((x, y)) != RED for x in range(34, 64, 3) for y in range(0, 64, 7))


def test_openai_sdk_edit_without_a_mask_answers_a_url(stack: Stack) -> None:
    with openai_client(stack) as client:
        result = client.images.edit(image=("a.png", picture(48, 32), "image/png"),
                                    prompt="add a hat", model="local", size="48x32", n=2)
    assert len(result.data) == 2 and all(d.url for d in result.data)
    assert open_image(httpx.get(result.data[0].url or "").content).size == (48, 32)


def test_several_images_and_a_mask_reach_openai_as_its_edit_call(provider_stack: Stack,
                                                                  fakes) -> None:
    with openai_client(provider_stack) as client:
        result = client.images.edit(
            image=[("a.png", picture(320, 240), "image/png"),
                   ("b.png", picture(100, 100), "image/png")],
            mask=("mask.png", half_mask(320, 240), "image/png"), prompt="combine",
            model="gpt-image-2", input_fidelity="high", quality="low", n=1)
    assert result.data[0].b64_json, "gpt-image models answer b64_json by default"
    edit = fakes[0].requests_to("edits")[0]
    assert [open_image(f[2]).size for f in edit.files["image[]"]] == [(320, 240), (100, 100)]
    assert open_image(edit.files["mask"][0][2]).size == (320, 240)
    assert edit.fields["input_fidelity"] == ["high"] and edit.fields["quality"] == ["low"]


def test_json_form_with_image_urls(http: httpx.Client) -> None:
    answer = http.post(EDITS, json={
        "images": [{"image_url": data_url(png(64, 64))}],
        "mask": {"image_url": data_url(half_mask(64, 64))},
        "prompt": "x", "model": "local", "size": "64x64", "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text
    image = open_image(base64.b64decode(answer.json()["data"][0]["b64_json"])).convert("RGBA")
    assert image.getpixel((3, 3)) == RED


def test_grpc_generate_takes_a_mask(stub) -> None:
    reply = stub.Generate(pb.GenerateRequest(
        prompt="x", model="local", size="64x64", response_format="b64_json",
        image=[base64.b64encode(png(64, 64)).decode()], mask=data_url(half_mask(64, 64))),
        metadata=GRPC_AUTH, timeout=60)
    assert open_image(reply.data[0].b64_json).convert("RGBA").getpixel((3, 3)) == RED


def form(**parts: tuple[str, bytes, str] | str) -> dict[str, object]:
    """httpx's `files` and `data` for a multipart form of these parts."""
    return {"files": {k: v for k, v in parts.items() if isinstance(v, tuple)},
            "data": {k: v for k, v in parts.items() if isinstance(v, str)}}


@pytest.mark.parametrize(("parts", "param", "code"), [
    ({"prompt": "x", "model": "local"}, "image", "missing_required_parameter"),
    ({"prompt": "x", "model": "local", "image": ("a.txt", b"hello", "text/plain")}, "image",
     "invalid_image"),
    ({"prompt": "x", "model": "local", "image": ("a.png", png(64, 64), "image/png"),
      "mask": ("m.png", half_mask(32, 32), "image/png")}, "mask", "invalid_mask"),
    ({"prompt": "x", "model": "local", "image": ("a.png", png(64, 64), "image/png"),
      "mask": ("m.png", png(64, 64, (0, 0, 0), "RGB"), "image/png")}, "mask", "invalid_mask"),
    ({"prompt": "x", "model": "local", "image": ("a.png", png(64, 64), "image/png"),
      "n": "two"}, "n", "invalid_type"),
    ({"prompt": "x", "model": "local", "image": ("a.png", png(64, 64), "image/png"),
      "input_fidelity": "high"}, "input_fidelity", "unsupported_value"),
])
def test_bad_forms_are_400_naming_the_field(http: httpx.Client, parts: dict, param: str,
                                            code: str) -> None:
    assert_error(http.post(EDITS, **form(**parts)), 400, param, code)  # type: ignore[arg-type]


def test_gemini_refuses_a_mask_naming_mask(provider_stack: Stack, fakes) -> None:
    with http_client(provider_stack) as rest:
        answer = rest.post(EDITS, files={"image": ("a.png", png(64, 64), "image/png"),
                                         "mask": ("m.png", half_mask(64, 64), "image/png")},
                           data={"prompt": "x", "model": "gemini-3.1-flash-image"})
    assert_error(answer, 400, "mask", "unsupported_value")
    assert not fakes[1].requests_to("generateContent")


@pytest.mark.parametrize(("body", "content_type", "param", "code"), [
    (b"--xx\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nhi",
     "multipart/form-data; boundary=xx", None, "invalid_form"),
    (b"--xx\r\n\r\nno name\r\n--xx--\r\n", "multipart/form-data; boundary=xx", None,
     "invalid_form"),
    (b"x", "multipart/form-data", None, "invalid_form"),
    (b'{"prompt": "x", "images": [{"file_id": "file-123"}]}', "application/json", "images",
     "unsupported_value"),
    (b'{"prompt": "x", "images": [{"image_url": "data:image/png;base64,AAAA"}], '
     b'"mask": {"file_id": "file-1"}}', "application/json", "mask", "unsupported_value"),
    (b'{"prompt": "x", "images": "nope"}', "application/json", "images", "invalid_type"),
    (b'{"prompt": "x", "image": 5}', "application/json", "image", "invalid_type"),
    (b'{"prompt": "x", "images": [{"image_url": 5}]}', "application/json", "images",
     "invalid_type"),
    (b"{not json", "application/json", None, "invalid_json"),
    (b"prompt=x", "text/plain", None, "unsupported_content_type"),
])
def test_malformed_bodies_are_400(http: httpx.Client, body: bytes, content_type: str,
                                  param: str | None, code: str) -> None:
    assert_error(http.post(EDITS, content=body, headers={"content-type": content_type}), 400,
                 param, code)


def test_the_sdk_reads_an_edit_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(image=("a.png", png(64, 64), "image/png"),
                           mask=("m.png", half_mask(8, 8), "image/png"), prompt="x",
                           model="local")
    assert refused.value.status_code == 400 and "mask" in str(refused.value)
