"""Google's models through both doors, against a fake Google API on 127.0.0.1: Gemini's
generateContent (one image per call, aspect ratios, inline edits, token usage) and Imagen's
Vertex :predict, with Google's errors and safety blocks mapped."""

from __future__ import annotations

import asyncio
import base64

import grpc
import httpx
import pytest
import structlog
from google import genai
from google.genai import types

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc
from service.catalog.models import load_registry
from service.config import Settings
from service.contract.images import image_request
from service.errors import KnownSecrets
from service.generation import validation
from service.net.fetch import GuardedFetcher, image_fetch_limits
from service.providers import google_wire
from service.providers.base import Generation, ProviderDeps
from service.providers.google import GoogleProvider
from service.routing.deployments import Deployment
from tests.conftest import GRPC_AUTH, GRPC_OPTIONS, open_image
from tests.fakes.google_fake import FakeGoogle, google_error
from tests.fakes.images import picture
from tests.fakes.server import Reply
from tests.stack import Stack
from tests.test_bad_input import assert_error
from tests.test_end_to_end import assert_images_response

GENERATIONS = "/api/images/generations"


@pytest.fixture
def rest(provider_rest: httpx.Client) -> httpx.Client:
    return provider_rest


def test_gemini_maps_size_to_aspect_ratio_and_size_class(rest: httpx.Client, fakes) -> None:
    answer = rest.post(GENERATIONS, json={"model": "gemini-3.1-flash-image", "prompt": "a fox",
                                          "size": "1792x1024", "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text
    assert_images_response(answer.json(), 1)

    call = fakes[1].requests_to("generateContent")[0]
    assert fakes[1].model_of(call) == "gemini-3.1-flash-image"
    config = call.json["generationConfig"]
    assert config["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}
    assert "IMAGE" in config["responseModalities"]
    assert call.json["contents"][0]["parts"][0] == {"text": "a fox"}
    made = open_image(base64.b64decode(answer.json()["data"][0]["b64_json"]))
    assert made.size == (2048, 1152)
    usage = answer.json()["usage"]
    assert usage["output_tokens_details"]["image_tokens"] == 1120
    assert usage["input_tokens_details"] == {"text_tokens": 12, "image_tokens": 0}
    assert answer.headers["x-model-served"] == "gemini-3.1-flash-image"


def test_gemini_fans_out_one_call_per_image(rest: httpx.Client, fakes) -> None:
    answer = rest.post(GENERATIONS, json={"model": "gemini-3-pro-image", "prompt": "a fox",
                                          "n": 4, "size": "1024x1024"})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]) == 4
    assert len(fakes[1].requests_to("generateContent")) == 4
    assert answer.json()["usage"]["output_tokens_details"]["image_tokens"] == 4 * 1120


def test_gemini_edit_sends_input_images_inline(rest: httpx.Client, fakes) -> None:
    source = picture(200, 100)
    answer = rest.post(GENERATIONS, json={
        "model": "gemini-3.1-flash-image", "prompt": "make it night", "size": "1024x512",
        "image": [base64.b64encode(source).decode(), f"{fakes[2].url}/50x50.png"]})
    assert answer.status_code == 200, answer.text

    parts = fakes[1].requests_to("generateContent")[0].json["contents"][0]["parts"]
    inline = [p.get("inlineData") or p.get("inline_data") for p in parts[1:]]
    assert base64.urlsafe_b64decode(inline[0]["data"]) == source, "the SDK sends URL-safe base64"
    assert [i.get("mimeType") or i.get("mime_type") for i in inline] == ["image/png"] * 2
    assert answer.json()["usage"]["input_tokens_details"]["image_tokens"] == 2240


def test_gemini_output_format_is_converted(rest: httpx.Client, fakes) -> None:
    answer = rest.post(GENERATIONS, json={"model": "gemini-3.1-flash-image", "prompt": "x",
                                          "output_format": "jpeg", "output_compression": 60})
    assert answer.status_code == 200, answer.text
    fetched = httpx.get(answer.json()["data"][0]["url"])
    assert fetched.headers["content-type"] == "image/jpeg"
    assert open_image(fetched.content).format == "JPEG"


def test_retired_gemini_is_served_by_its_successor_at_the_asked_size(rest: httpx.Client,
                                                                    fakes) -> None:
    answer = rest.post(GENERATIONS, json={"model": "gemini-2.5-flash-image", "prompt": "x",
                                          "size": "640x360", "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text
    call = fakes[1].requests_to("generateContent")[0]
    assert fakes[1].model_of(call) == "gemini-3.1-flash-image"
    assert open_image(base64.b64decode(answer.json()["data"][0]["b64_json"])).size == (640, 360)
    assert answer.headers["x-model-served"] == "gemini-3.1-flash-image"


def test_imagen_native_on_vertex_uses_predict_four_per_call(rest: httpx.Client, fakes) -> None:
    answer = rest.post(GENERATIONS, json={"model": "imagen-4.0-generate-001", "prompt": "x",
                                          "n": 6, "size": "1024x768", "output_format": "webp",
                                          "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text

    calls = fakes[1].requests_to("predict")
    assert sorted(c.json["parameters"]["sampleCount"] for c in calls) == [2, 4]
    assert all(c.path.startswith("/v1beta1/publishers/google/models/imagen-4.0-generate-001")
               for c in calls)
    assert {c.json["parameters"]["aspectRatio"] for c in calls} == {"4:3"}
    assert {c.json["parameters"]["outputOptions"]["mimeType"] for c in calls} == {"image/webp"}
    assert [open_image(base64.b64decode(d["b64_json"])).format
            for d in answer.json()["data"]] == ["WEBP"] * 6


def test_retired_imagen_is_served_by_gemini(rest: httpx.Client, fakes) -> None:
    answer = rest.post(GENERATIONS, json={"model": "imagen-4.0-ultra-generate-001",
                                          "prompt": "x", "size": "1024x1024"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-served"] == "gemini-3-pro-image"
    assert fakes[1].requests_to("predict") == []


def test_google_429_carries_retry_delay(rest: httpx.Client, fakes) -> None:
    fakes[1].script("generateContent", google_error(
        429, "RESOURCE_EXHAUSTED", "You exceeded your current quota. Please retry in 26.3s.",
        [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"}]))
    answer = rest.post(GENERATIONS, json={"model": "gemini-3.1-flash-image", "prompt": "x"})
    assert_error(answer, 429, None, "upstream_rate_limited")
    assert answer.headers["retry-after"] == "26"


@pytest.mark.parametrize("blocked", [
    Reply(200, {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                "usageMetadata": {"promptTokenCount": 5}}),
    Reply(200, {"candidates": [{"content": {"role": "model", "parts": [{"text": "No."}]},
                                "finishReason": "IMAGE_SAFETY"}]}),
])
def test_google_safety_block_is_content_policy_violation(rest: httpx.Client, fakes,
                                                         blocked: Reply) -> None:
    fakes[1].script("generateContent", blocked)
    assert_error(rest.post(GENERATIONS, json={"model": "gemini-3.1-flash-image", "prompt": "x"}),
                 400, "prompt", "content_policy_violation")
    assert len(fakes[1].requests_to("generateContent")) == 1


def test_google_answer_without_image_is_502(rest: httpx.Client, fakes) -> None:
    fakes[1].script("generateContent", Reply(200, {"candidates": [{"content": {
        "role": "model", "parts": [{"text": "I would rather describe it."}]},
        "finishReason": "STOP"}]}))
    body = assert_error(rest.post(GENERATIONS, json={"model": "gemini-3.1-flash-image",
                                                     "prompt": "x"}),
                        502, None, "upstream_no_image")
    assert "describe it" in body["message"]


def test_google_500_is_retried(rest: httpx.Client, fakes) -> None:
    fakes[1].script("generateContent", google_error(503, "UNAVAILABLE", "The model is overloaded."))
    answer = rest.post(GENERATIONS, json={"model": "gemini-3.1-flash-image", "prompt": "x"})
    assert answer.status_code == 200, answer.text
    assert len(fakes[1].requests_to("generateContent")) == 2


def test_google_refusing_our_key_is_503(rest: httpx.Client, fakes) -> None:
    fakes[1].script("generateContent", google_error(
        400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
        [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]))
    answer = rest.post(GENERATIONS, json={"model": "gemini-3.1-flash-image", "prompt": "x"})
    assert_error(answer, 503, None, "upstream_auth_failed")


def test_gemini_over_grpc(provider_stack: Stack, fakes) -> None:
    with grpc.insecure_channel(provider_stack.server_target, options=GRPC_OPTIONS) as channel:
        stub = image_service_pb2_grpc.ImageServiceStub(channel)
        reply = stub.Generate(pb.GenerateRequest(model="gemini-3.1-flash-image", prompt="x",
                                                 n=2, size="1024x1024",
                                                 response_format="b64_json"),
                              metadata=GRPC_AUTH, timeout=60)
    assert [open_image(d.b64_json).size for d in reply.data] == [(1024, 1024)] * 2
    assert reply.usage.output_tokens_details.image_tokens == 2240


def test_fan_out_fails_as_one_and_cancels_the_other_calls(rest: httpx.Client, fakes) -> None:
    fakes[1].script("generateContent", Reply(hang=True),
                    google_error(400, "INVALID_ARGUMENT", "Unsupported prompt."))
    answer = rest.post(GENERATIONS, json={"model": "gemini-3.1-flash-image", "prompt": "x",
                                          "n": 3})
    assert_error(answer, 400, None, "upstream_invalid_request")
    assert fakes[1].wait_for_disconnect("generateContent"), "the hanging call was cancelled"


def test_gemini_gets_the_sdks_own_request(rest: httpx.Client, fakes) -> None:
    """Gemini calls go out on a bare aiohttp session (providers/google_wire.py) with the
    request google-genai builds: the path, the headers and the JSON of the SDK's own call with
    the same prompt, image and config, and our request id and deadline besides."""
    source = picture(64, 32)
    answer = rest.post(GENERATIONS, json={
        "model": "gemini-3.1-flash-image", "prompt": "a fox at night", "size": "1024x512",
        "image": base64.b64encode(source).decode()}, headers={"x-request-id": "req-gemini-1"})
    assert answer.status_code == 200, answer.text
    ours = fakes[1].requests_to("generateContent")[-1]

    image_config = ours.json["generationConfig"]["imageConfig"]
    with genai.Client(api_key=fakes[1].api_key,
                      http_options=types.HttpOptions(base_url=fakes[1].url)) as client:
        client.models.generate_content(
            model=fakes[1].model_of(ours),
            contents=["a fox at night", types.Part.from_bytes(data=source, mime_type="image/png")],
            config=types.GenerateContentConfig(
                response_modalities=["TEXT", "IMAGE"],
                image_config=types.ImageConfig(aspect_ratio=image_config["aspectRatio"],
                                               image_size=image_config["imageSize"])))
    sdks = fakes[1].requests_to("generateContent")[-1]
    assert sdks is not ours
    assert (ours.path, ours.json) == (sdks.path, sdks.json)
    for name in ("x-goog-api-key", "x-goog-api-client", "user-agent", "content-type"):
        assert ours.headers[name] == sdks.headers[name], name
    assert ours.headers["x-request-id"] == "req-gemini-1"
    assert 0 < int(ours.headers["x-server-timeout"]) <= 300


def test_gemini_keeps_working_if_the_sdk_writes_its_body_otherwise(
        fake_google: FakeGoogle, monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a google-genai release write generateContent's body another way than
    google_wire.py does, the wire notices on its first call, says so, and the SDK's own
    transport (the one application default credentials always use) serves from then on."""
    monkeypatch.setattr(google_wire, "_contents", lambda prompt, images: {
        "role": "user", "parts": [{"text": prompt}], "written": "otherwise"})
    fake_google.script("generateContent", THINKING_ROUND, Reply(as_usual=True))
    registry = load_registry(None)
    request = pb.GenerateRequest(model="gemini-3.1-flash-image", prompt="a fox", size="1024x1024")
    job = validation.plan(image_request(request), registry.route(request.model)).job
    deps = ProviderDeps(GuardedFetcher(image_fetch_limits(Settings())), KnownSecrets())
    provider = GoogleProvider.build(Deployment(id="g", name="g", kind="gemini",
                                               base_url=fake_google.url),
                                    fake_google.api_key, deps)
    asked_before = len(fake_google.requests_to("generateContent"))

    async def twice() -> list[Generation]:
        try:
            return [await provider.generate(job), await provider.generate(job)]
        finally:
            await provider.aclose()

    with structlog.testing.capture_logs() as logs:
        made = asyncio.run(twice())
    assert [open_image(g.images[0].data).size for g in made] == [(1024, 1024)] * 2
    assert [g.usage and (g.usage.input_text, g.usage.output_image) for g in made] == [
        (22, 1120), (12, 1120)]  # the first call's two rounds, merged
    assert [entry["event"] for entry in logs] == ["gemini_wire_off"]
    sent = fake_google.requests_to("generateContent")[asked_before:]
    assert [r.json["contents"] for r in sent] == [[{"role": "user",
                                                     "parts": [{"text": "a fox"}]}]] * 3
    assert [r.json.get("continuationToken") for r in sent] == [None, "dG9r", None]


THINKING_ROUND = Reply(200, {
    "candidates": [{"content": {"role": "model", "parts": [{"text": "thinking", "thought": True}]},
                    "finishReason": "CONTINUATION", "continuationToken": "dG9r", "index": 0}],
    "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 20,
                      "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 20}]}})


def test_gemini_continuation_rounds_are_followed_and_merged(rest: httpx.Client, fakes) -> None:
    """A thinking model's answer in two rounds (CONTINUATION and a token, then the image), as
    the SDK's generate_content follows it: the same request again with the token; one image,
    the tokens of both rounds charged."""
    fakes[1].script("generateContent", THINKING_ROUND, Reply(as_usual=True))
    answer = rest.post(GENERATIONS, json={"model": "gemini-3.1-flash-image", "prompt": "a fox",
                                          "size": "1024x1024", "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text
    first, second = fakes[1].requests_to("generateContent")[-2:]
    assert "continuationToken" not in first.json
    assert second.json == {**first.json, "continuationToken": "dG9r"}
    assert open_image(base64.b64decode(answer.json()["data"][0]["b64_json"])).size == (1024, 1024)
    usage = answer.json()["usage"]
    assert usage["input_tokens_details"] == {"text_tokens": 22, "image_tokens": 0}
    assert usage["output_tokens_details"] == {"text_tokens": 30, "image_tokens": 1120}


@pytest.mark.parametrize("body", [{"error": "quota"}, {"error": {"details": 5, "message": 5}},
                                  ["not", "an", "object"]])
def test_a_malformed_google_error_is_still_a_clear_error(rest: httpx.Client, fakes,
                                                         body) -> None:
    fakes[1].script("generateContent", Reply(429, body))
    answer = rest.post(GENERATIONS, json={"model": "gemini-3.1-flash-image", "prompt": "x"})
    assert_error(answer, 429, None, "upstream_rate_limited")
