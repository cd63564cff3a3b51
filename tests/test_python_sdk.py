"""Every images.* method of the official Python SDK, and models.list/retrieve, through Envoy
against the fake OpenAI, streaming and not, as an OpenAI user writes them (the plain base
URL): every answer and event valid against OpenAI's published schema."""

from __future__ import annotations

import base64

import openai

from tests.conftest import open_image, openai_client
from tests.fakes.images import picture
from tests.openai_schema import assert_openai
from tests.stack import Stack
from tests.test_edits import half_mask, png
from tests.test_openai_streams import SCHEMAS


def assert_events(events: list, kind: str) -> None:
    assert events[-1].type == f"{kind}.completed"
    assert f"{kind}.partial_image" in {e.type for e in events}
    for event in events:
        assert_openai(event.to_dict(), SCHEMAS[event.type])


def test_every_images_method_of_the_python_sdk(provider_stack: Stack, fakes) -> None:
    image = ("a.png", png(1024, 1024), "image/png")
    with openai_client(provider_stack) as client:
        images = client.images.with_raw_response
        answers = {
            "generate": images.generate(model="gpt-image-2", prompt="a fox", n=2),
            "generate_url": images.generate(model="gpt-image-2", prompt="a fox",
                                            response_format="url"),
            "edit": images.edit(model="gpt-image-2", prompt="add a hat",
                                image=[image, ("b.png", picture(320, 240), "image/png")],
                                mask=("m.png", half_mask(1024, 1024), "image/png")),
            "variation": images.create_variation(model="dall-e-2", image=image,
                                                 size="256x256", response_format="b64_json"),
        }
        generated = list(client.images.generate(model="gpt-image-2", prompt="a fox",
                                                stream=True, partial_images=2))
        edited = list(client.images.edit(model="gpt-image-2", prompt="add a hat", image=image,
                                         stream=True, partial_images=1))
        listed = [m.id for m in client.models.list()]
        retrieved = client.models.with_raw_response.retrieve("dall-e-2")

    for raw in answers.values():
        assert_openai(raw.http_response.json(), "ImagesResponse")
    assert [bool(d.b64_json) for d in answers["generate"].parse().data] == [True, True]
    assert answers["generate_url"].parse().data[0].url
    variation = answers["variation"].parse().data[0].b64_json or ""
    assert open_image(base64.b64decode(variation)).size == (256, 256)
    assert_events(generated, "image_generation")
    assert_events(edited, "image_edit")
    assert isinstance(edited[-1], openai.types.ImageEditCompletedEvent)
    assert {"local", "gpt-image-2", "dall-e-2"} <= set(listed)
    assert_openai(retrieved.http_response.json(), "Model")
    assert retrieved.parse().id == "dall-e-2"
