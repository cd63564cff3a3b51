"""Every images.* method of the official Node SDK (npm `openai`, pinned in package.json), and
its models.list/retrieve, through Envoy against the fake OpenAI, streaming and not: each
answer and each streamed event valid against OpenAI's published schema
(tests/data/openai-openapi-images.json). The script is tests/node/openai_images.mjs."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import open_image
from tests.fakes.images import picture
from tests.openai_schema import assert_openai
from tests.stack import TEST_KEY, Stack
from tests.test_edits import half_mask, png
from tests.test_openai_streams import SCHEMAS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "node" / "openai_images.mjs"


@pytest.fixture
def node_results(provider_stack: Stack, fakes, tmp_path: Path) -> dict:
    paths = {"image": png(1024, 1024), "mask": half_mask(1024, 1024),
             "other": picture(320, 240)}
    for name, data in paths.items():
        (tmp_path / f"{name}.png").write_bytes(data)
    done = subprocess.run(
        ["node", SCRIPT, provider_stack.api_url, TEST_KEY,
         *(tmp_path / f"{name}.png" for name in paths)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_images_method_of_the_node_sdk(node_results: dict, fakes) -> None:
    for method in ("generate", "generate_url", "edit", "create_variation"):
        assert_openai(node_results[method], "ImagesResponse")
    assert [set(d) for d in node_results["generate"]["data"]] == [{"b64_json"}] * 2
    assert set(node_results["generate_url"]["data"][0]) == {"url"}
    variation = node_results["create_variation"]["data"][0]["b64_json"]
    assert open_image(base64.b64decode(variation)).size == (256, 256)

    for method, kind in (("generate_stream", "image_generation"), ("edit_stream", "image_edit")):
        events = node_results[method]
        assert [e["type"] for e in events][-1] == f"{kind}.completed"
        assert f"{kind}.partial_image" in {e["type"] for e in events}
        for event in events:
            assert_openai(event, SCHEMAS[event["type"]])

    edit = fakes[0].requests_to("edits")[0]
    assert len(edit.files["image[]"]) == 2 and "mask" in edit.files
    assert edit.fields["input_fidelity"] == ["high"]
    assert {"local", "gpt-image-2", "dall-e-2"} <= set(node_results["models_list"])
    assert_openai(node_results["models_retrieve"], "Model")
    assert node_results["edit_refused"] == {"status": 400, "param": "mask",
                                            "code": "unsupported_value"}
