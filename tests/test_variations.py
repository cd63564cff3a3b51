"""POST /api/images/variations as the openai SDK's `images.create_variation` calls it: an edit
of the one image with a fixed prompt, by a model that can edit; others are a 400 naming
`model`."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest

from tests.conftest import http_client, open_image, openai_client
from tests.fakes.images import picture
from tests.openai_schema import assert_openai
from tests.stack import Stack
from tests.test_bad_input import assert_error

VARIATIONS = "/api/images/variations"


def test_sdk_variation_with_the_default_model(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.create_variation(
        image=("cat.png", picture(64, 64), "image/png"), n=2, size="256x256")
    assert_openai(raw.http_response.json(), "ImagesResponse")
    result = raw.parse()
    assert len(result.data) == 2 and all(d.url for d in result.data), "local keeps url"
    assert open_image(httpx.get(result.data[0].url or "").content).size == (256, 256)


def test_sdk_variation_of_dall_e_2_reaches_openai_as_an_edit(provider_stack: Stack,
                                                             fakes) -> None:
    with openai_client(provider_stack) as client:
        raw = client.images.with_raw_response.create_variation(
            image=("cat.png", picture(512, 512), "image/png"), model="dall-e-2",
            size="512x512", response_format="b64_json")
    assert_openai(raw.http_response.json(), "ImagesResponse")
    result = raw.parse()
    assert open_image(base64.b64decode(result.data[0].b64_json or "")).size == (512, 512)
    assert raw.headers["x-model-served"] == "gpt-image-2"
    edit = fakes[0].requests_to("edits")[0]
    assert edit.fields["prompt"][0].startswith("A variation of this image")
    assert open_image(edit.files["image"][0][2]).size == (512, 512)


def test_a_model_that_cannot_edit_is_refused_naming_model(provider_stack: Stack,
                                                          fakes) -> None:
    with openai_client(provider_stack) as client, pytest.raises(openai.BadRequestError) as bad:
        client.images.create_variation(image=("cat.png", picture(64, 64), "image/png"),
                                       model="dall-e-3")
    assert bad.value.body["param"] == "model"  # type: ignore[index]
    assert not fakes[0].received
    with http_client(provider_stack) as rest:
        assert_error(rest.post(VARIATIONS, files={"image": ("a.png", b"nope", "image/png")},
                               data={"model": "local"}), 400, "image", "invalid_image")
        assert_error(rest.post(VARIATIONS, files={"x": ("a.png", b"", "image/png")}), 400,
                     "image", "missing_required_parameter")
        assert_error(rest.post(VARIATIONS, json={"image": "x"}), 400, None,
                     "unsupported_content_type")
