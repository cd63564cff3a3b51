"""OpenAI's models through both doors, against a fake OpenAI on 127.0.0.1 that answers as
today's API does: gpt-image-2 first-class, retired names translated, edits, errors mapped."""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime

import grpc
import httpx
import openai
import pytest

from aigne.hub.v1 import image_service_pb2 as pb
from tests.conftest import (
    GRPC_AUTH,
    ImageHost,
    http_client,
    open_image,
    openai_client,
    provider_env,
)
from tests.fakes.google_fake import FakeGoogle
from tests.fakes.images import picture
from tests.fakes.openai_fake import FakeOpenAI, error
from tests.fakes.server import Reply
from tests.stack import TEST_KEY, Stack
from tests.test_bad_input import assert_error
from tests.test_end_to_end import assert_images_response

GENERATIONS = "/api/images/generations"


@pytest.fixture
def rest(provider_rest: httpx.Client) -> httpx.Client:
    return provider_rest


def test_gpt_image_2_through_the_openai_sdk(provider_stack: Stack, fakes) -> None:
    fake_openai = fakes[0]
    with openai_client(provider_stack) as client:
        raw = client.images.with_raw_response.generate(
            model="gpt-image-2", prompt="a fox", size="1536x1024", quality="high", n=2,
            output_format="webp", output_compression=70, moderation="low",
            response_format="b64_json")
    result = raw.parse()

    sent = fake_openai.requests_to("generations")[0].json
    assert sent == {"model": "gpt-image-2", "prompt": "a fox", "n": 2, "size": "1536x1024",
                    "quality": "high", "output_format": "webp", "output_compression": 70,
                    "moderation": "low"}
    assert raw.headers["x-model-served"] == "gpt-image-2"
    assert "deprecation" not in raw.headers
    formats = [open_image(base64.b64decode(d.b64_json or "")).format for d in result.data]
    assert formats == ["WEBP"] * 2
    assert result.usage is not None and result.usage.output_tokens > 0
    assert result.usage.input_tokens_details.text_tokens > 0
    assert result.output_format == "webp"


def test_the_upstream_gets_the_sdks_own_request(rest: httpx.Client, fakes) -> None:
    """Generations go out on a bare aiohttp session (providers/openai_wire.py), with the
    request the `openai` SDK builds: its auth, its headers, our request id, plain JSON."""
    answer = rest.post("/api/images/generations", json={
        "model": "gpt-image-2", "prompt": "a fox", "response_format": "b64_json"},
        headers={"x-request-id": "req-sdk-headers-1"})
    assert answer.status_code == 200, answer.text
    sent = fakes[0].requests_to("generations")[-1]
    assert sent.headers["authorization"] == f"Bearer {fakes[0].api_key}"
    assert sent.headers["user-agent"] == f"AsyncOpenAI/Python {openai.__version__}"
    assert sent.headers["x-stainless-lang"] == "python"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["x-request-id"] == "req-sdk-headers-1"
    assert sent.json["model"] == "gpt-image-2" and sent.json["prompt"] == "a fox"


def test_gpt_image_2_url_answer_is_served_from_our_store(rest: httpx.Client,
                                                         provider_stack: Stack) -> None:
    answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "a fox",
                                          "size": "1024x1536", "response_format": "url"})
    assert answer.status_code == 200, answer.text
    assert_images_response(answer.json(), 1)
    url = answer.json()["data"][0]["url"]
    assert url.startswith(provider_stack.base_url)
    assert open_image(httpx.get(url).content).size == (1024, 1536)


def test_gpt_image_2_over_grpc(provider_stub) -> None:
    reply, call = provider_stub.Generate.with_call(
        pb.GenerateRequest(model="gpt-image-2", prompt="a fox", n=3, size="auto",
                           response_format="b64_json"), metadata=GRPC_AUTH, timeout=60)
    assert len(reply.data) == 3 and open_image(reply.data[0].b64_json).size == (1024, 1024)
    assert reply.usage.output_tokens > 0 and reply.usage.input_tokens_details.text_tokens > 0
    assert ("x-model-served", "gpt-image-2") in tuple(call.initial_metadata())


def test_dall_e_2_is_served_by_gpt_image_2_at_the_asked_size(rest: httpx.Client, fakes) -> None:
    answer = rest.post(GENERATIONS, json={"model": "dall-e-2", "prompt": "a cat",
                                          "size": "256x256", "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text

    sent = fakes[0].requests_to("generations")[0].json
    assert (sent["model"], sent["quality"]) == ("gpt-image-2", "low")
    w, h = (int(x) for x in sent["size"].split("x"))
    assert w % 16 == 0 and h % 16 == 0 and w * h >= 655_360 and w == h
    image = open_image(base64.b64decode(answer.json()["data"][0]["b64_json"]))
    assert (image.format, image.size) == ("PNG", (256, 256))
    assert answer.headers["x-model-served"] == "gpt-image-2"
    assert parsedate_to_datetime(answer.headers["sunset"]).date().isoformat() == "2026-05-12"
    assert answer.headers["deprecation"].startswith("@")


def test_seed_default_model_is_dall_e_2_when_openai_is_configured(rest: httpx.Client,
                                                                  fakes) -> None:
    answer = rest.post(GENERATIONS, json={"prompt": "a cat", "n": 1, "size": "1024x1024"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-served"] == "gpt-image-2"
    assert fakes[0].requests_to("generations")[0].json["quality"] == "low"


def test_dall_e_3_hd_arrives_as_high_and_style_as_a_hint(rest: httpx.Client, fakes) -> None:
    answer = rest.post(GENERATIONS, json={
        "model": "dall-e-3", "prompt": "an oil painting of a city", "size": "1792x1024",
        "quality": "hd", "style": "natural", "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text

    sent = fakes[0].requests_to("generations")[0].json
    assert (sent["model"], sent["quality"], sent["size"]) == ("gpt-image-2", "high", "1792x1024")
    assert "style" not in sent and "natural" in sent["prompt"].lower()
    assert open_image(base64.b64decode(answer.json()["data"][0]["b64_json"])).size == (1792, 1024)


def test_dall_e_3_keeps_its_own_rules(rest: httpx.Client, fakes) -> None:
    assert_error(rest.post(GENERATIONS, json={"model": "dall-e-3", "prompt": "x",
                                              "quality": "high"}), 400, "quality")
    assert_error(rest.post(GENERATIONS, json={"model": "dall-e-2", "prompt": "x",
                                              "size": "1536x1024"}), 400, "size")
    assert fakes[0].received == []


def test_refuse_switch_answers_404_model_retired(rest: httpx.Client, fakes) -> None:
    error_body = assert_error(rest.post(GENERATIONS, json={"model": "gpt-image-1",
                                                           "prompt": "x"}),
                              404, "model", "model_retired")
    assert "gpt-image-2" in error_body["message"]
    assert fakes[0].received == []


def test_deprecated_model_is_served_as_asked_with_sunset_headers(rest: httpx.Client,
                                                                  fakes) -> None:
    answer = rest.post(GENERATIONS, json={"model": "gpt-image-test-deprecated", "prompt": "x"})
    assert answer.status_code == 200, answer.text
    assert fakes[0].requests_to("generations")[0].json["model"] == "gpt-image-1.5"
    assert answer.headers["x-model-served"] == "gpt-image-test-deprecated"
    assert parsedate_to_datetime(answer.headers["sunset"]).year == 2099
    assert answer.headers["deprecation"] == "@1780358400"  # 2026-06-02T00:00:00Z


def test_gpt_image_models_answer_b64_json_unless_asked_for_a_url(rest: httpx.Client,
                                                                provider_stub) -> None:
    """OpenAI answers gpt-image models in base64, and their clients read `b64_json`; the
    seed's names keep the seed's `url` even though gpt-image-2 serves them."""
    def first(model: str, **fields: str) -> dict:
        answer = rest.post(GENERATIONS, json={"model": model, "prompt": "x", **fields})
        assert answer.status_code == 200, answer.text
        return answer.json()["data"][0]

    assert set(first("gpt-image-2")) == {"b64_json"}
    assert set(first("gpt-image-test-deprecated")) == {"b64_json"}
    assert set(first("gpt-image-2", response_format="url")) == {"url"}
    assert set(first("dall-e-2")) == {"url"} and set(first("dall-e-3")) == {"url"}
    assert set(first("gemini-3.1-flash-image")) == {"url"}
    reply = provider_stub.Generate(pb.GenerateRequest(model="gpt-image-2", prompt="x"),
                                   metadata=GRPC_AUTH, timeout=30)
    assert reply.data[0].WhichOneof("content") == "b64_json"


def test_edit_with_one_base64_image_goes_to_images_edit(rest: httpx.Client, fakes) -> None:
    source = base64.b64encode(picture(640, 480)).decode()
    answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "add a hat",
                                          "image": f"data:image/png;base64,{source}"})
    assert answer.status_code == 200, answer.text

    edit = fakes[0].requests_to("edits")[0]
    assert list(edit.files) == ["image"]
    assert edit.files["image"][0][1] == "image/png"
    assert edit.files["image"][0][2] == base64.b64decode(source)
    assert edit.fields["model"] == ["gpt-image-2"] and edit.fields["prompt"] == ["add a hat"]


def test_edit_with_several_images_and_a_url(rest: httpx.Client, fakes) -> None:
    host: ImageHost = fakes[2]
    answer = rest.post(GENERATIONS, json={
        "model": "gpt-image-2", "prompt": "combine", "response_format": "b64_json",
        "image": [f"{host.url}/320x240.png", base64.b64encode(picture(100, 100)).decode()]})
    assert answer.status_code == 200, answer.text

    files = fakes[0].requests_to("edits")[0].files["image[]"]
    assert [open_image(f[2]).size for f in files] == [(320, 240), (100, 100)]
    assert [r.route for r in host.received] == ["320x240.png"]


def test_url_input_follows_a_redirect_on_an_allowed_host(rest: httpx.Client, fakes) -> None:
    host: ImageHost = fakes[2]
    answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x",
                                          "image": f"{host.url}/redirect/64x64.png"})
    assert answer.status_code == 200, answer.text
    assert [r.route for r in host.received] == ["redirect/64x64.png", "64x64.png"]


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/cat.png", "http://localhost/cat.png", "http://169.254.169.254/latest",
    "http://10.0.0.1/cat.png", "http://[::1]/cat.png", "http://[::ffff:127.0.0.1]/x.png",
    "http://0.0.0.0/x.png", "ftp://example.com/x.png", "http://user:pw@127.0.0.1/x.png",
])
def test_forbidden_image_urls_are_refused_unfetched(rest: httpx.Client, fakes, url: str) -> None:
    error_body = assert_error(rest.post(GENERATIONS, json={"model": "gpt-image-2",
                                                           "prompt": "x", "image": url}),
                              400, "image")
    assert "image[0]" in error_body["message"]
    assert fakes[0].received == []


def test_redirect_to_a_forbidden_address_is_refused(rest: httpx.Client, fakes) -> None:
    host: ImageHost = fakes[2]
    host.script("bounce.png", Reply(302, raw=b"",
                                    headers={"location": "http://169.254.169.254/latest"}))
    assert_error(rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x",
                                              "image": f"{host.url}/bounce.png"}),
                 400, "image", "image_url_forbidden")


def test_url_that_is_not_an_image_is_refused(rest: httpx.Client, fakes) -> None:
    host: ImageHost = fakes[2]
    assert_error(rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x",
                                              "image": f"{host.url}/not-an-image.png"}),
                 400, "image", "invalid_image")
    assert_error(rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x",
                                              "image": f"{host.url}/missing.png"}),
                 400, "image")


def test_upstream_400_keeps_its_message(rest: httpx.Client, fakes) -> None:
    fakes[0].script("generations", error(400, "Invalid value: 'abc'. Something is off.",
                                         param="quality", code="invalid_value"))
    body = assert_error(rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x"}),
                        400, "quality", "upstream_invalid_request")
    assert "Something is off." in body["message"]


def test_content_policy_refusal_is_400_content_policy_violation(rest: httpx.Client, fakes,
                                                                provider_stub) -> None:
    refusal = error(400, "Your request was rejected by the safety system.",
                    code="moderation_blocked", kind="image_generation_user_error")
    fakes[0].script("generations", refusal, refusal)
    assert_error(rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x"}),
                 400, "prompt", "content_policy_violation")
    with pytest.raises(grpc.RpcError) as caught:
        provider_stub.Generate(pb.GenerateRequest(model="gpt-image-2", prompt="x"),
                               metadata=GRPC_AUTH, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(fakes[0].requests_to("generations")) == 2, "refusals are not retried"


def test_upstream_429_is_429_with_retry_after(rest: httpx.Client, fakes) -> None:
    fakes[0].script("generations", error(429, "Rate limit reached for images per min.",
                                         code="rate_limit_exceeded", kind="requests",
                                         headers={"retry-after": "7"}))
    answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x"})
    assert_error(answer, 429, None, "upstream_rate_limited")
    assert answer.headers["retry-after"] == "7"
    assert len(fakes[0].requests_to("generations")) == 1


def test_a_compressed_error_keeps_its_meaning(rest: httpx.Client, fakes) -> None:
    """The request offers gzip (the SDK's headers): a gzipped 429 with a header that is not
    ASCII is still the upstream's rate limit, with its Retry-After."""
    body = json.dumps({"error": {"message": "Rate limit reached for images per min.",
                                 "type": "requests", "param": None,
                                 "code": "rate_limit_exceeded"}}).encode()
    fakes[0].script("generations", Reply(429, raw=gzip.compress(body), headers={
        "content-encoding": "gzip", "retry-after": "7", "x-note": "caf\u00e9"}))
    answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x"})
    assert_error(answer, 429, None, "upstream_rate_limited")
    assert answer.headers["retry-after"] == "7"
    assert "gzip" in fakes[0].requests_to("generations")[-1].headers["accept-encoding"]


def test_a_redirect_is_not_followed(rest: httpx.Client, fakes, image_host) -> None:
    """The key would go with it: a 3xx is the upstream's error, not an empty success."""
    fakes[0].script("generations", Reply(307, raw=b"", headers={
        "location": f"{image_host.url}/elsewhere"}), Reply(307, raw=b"", headers={
        "location": f"{image_host.url}/elsewhere"}), Reply(307, raw=b"", headers={
        "location": f"{image_host.url}/elsewhere"}))
    answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x"})
    body = assert_error(answer, 502, None, None)
    assert "307" in body["message"]
    assert not [r for r in image_host.received if "elsewhere" in r.path]


def test_upstream_500_is_retried_then_succeeds(rest: httpx.Client, fakes) -> None:
    fakes[0].script("generations", error(500, "The server had an error.", kind="server_error"))
    answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x"})
    assert answer.status_code == 200, answer.text
    assert len(fakes[0].requests_to("generations")) == 2


@pytest.mark.parametrize(("failure", "code"), [
    (error(503, "Overloaded.", kind="server_error"), "upstream_error"),
    (Reply(200, raw=b"this is not json"), "upstream_bad_response"),
    (Reply(200, {"created": 1, "data": [{"b64_json": base64.b64encode(
        picture(1024, 1024, noise=True)[:50_000]).decode()}]}), "upstream_error"),
    (Reply(reset=True), "upstream_unreachable"),
])
def test_upstream_that_keeps_failing_is_502(rest: httpx.Client, fakes, failure: Reply,
                                            code: str) -> None:
    fakes[0].script("generations", failure, failure, failure)
    assert_error(rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x"}),
                 502, None, code)
    assert len(fakes[0].requests_to("generations")) == 3, "one try and two retries"


def test_upstream_refusing_our_credentials_is_503_without_the_key(rest: httpx.Client,
                                                                  fakes) -> None:
    fakes[0].script("generations", error(401, f"Incorrect API key provided: "
                                              f"{FakeOpenAI.api_key}.", code="invalid_api_key"))
    answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x"})
    body = assert_error(answer, 503, None, "upstream_auth_failed")
    assert "OPENAI_API_KEY" in body["message"]
    assert FakeOpenAI.api_key not in answer.text


def test_upstream_model_not_found_is_502_naming_the_model(provider_stack: Stack, fakes) -> None:
    fakes[0].retired.add("gpt-image-2")
    try:
        with http_client(provider_stack) as rest:
            body = assert_error(rest.post(GENERATIONS, json={"model": "gpt-image-2",
                                                             "prompt": "x"}),
                                502, None, "upstream_model_not_found")
    finally:
        fakes[0].retired.discard("gpt-image-2")
    assert "gpt-image-2" in body["message"]
    assert len(fakes[0].requests_to("generations")) == 1


def test_grpc_deadline_reaches_the_provider_and_cancels_it(provider_stub, fakes) -> None:
    fakes[0].script("generations", Reply(hang=True))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        provider_stub.Generate(pb.GenerateRequest(model="gpt-image-2", prompt="slow"),
                               metadata=GRPC_AUTH, timeout=2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10
    assert fakes[0].wait_for_disconnect("generations"), "the upstream call was cancelled"


def test_rest_client_that_goes_away_cancels_the_upstream_call(provider_stack: Stack,
                                                              fakes) -> None:
    fakes[0].script("generations", Reply(hang=True))
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{provider_stack.base_url}{GENERATIONS}", timeout=1.5,
                   json={"model": "gpt-image-2", "prompt": "slow"},
                   headers={"Authorization": f"Bearer {TEST_KEY}"})
    assert fakes[0].wait_for_disconnect("generations")


@pytest.fixture(scope="module")
def short_budget_stack(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI,
                       fake_google: FakeGoogle, image_host: ImageHost) -> Iterator[Stack]:
    env = {**provider_env(fake_openai, fake_google, image_host),
           "AIGNE_HUB_REQUEST_TIMEOUT_SECONDS": "3"}
    with Stack(tmp_path_factory.mktemp("short-budget"), env) as running:
        yield running


def test_slow_upstream_is_504_within_the_rest_budget(short_budget_stack: Stack, fakes) -> None:
    fakes[0].script("generations", Reply(hang=True))
    started = time.monotonic()
    with http_client(short_budget_stack) as rest:
        answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "slow"})
    assert_error(answer, 504, None, "timeout")
    assert 2.5 < time.monotonic() - started < 8
    assert fakes[0].wait_for_disconnect("generations")


@pytest.fixture(scope="module")
def native_stack(tmp_path_factory: pytest.TempPathFactory, fake_google: FakeGoogle,
                 image_host: ImageHost) -> Iterator[tuple[Stack, FakeOpenAI]]:
    """An OpenAI-compatible upstream that still serves dall-e-3, declared so by config."""
    upstream = FakeOpenAI(retired=set()).start()
    models = tmp_path_factory.mktemp("native-models") / "models.toml"
    models.write_text('[models.dall-e-3]\nlifecycle = "active"\n'
                      'upstream_params = { response_format = "b64_json" }\n')
    env = {**provider_env(upstream, fake_google, image_host),
           "AIGNE_HUB_MODELS_FILE": str(models)}
    try:
        with Stack(tmp_path_factory.mktemp("native"), env) as running:
            yield running, upstream
    finally:
        upstream.stop()


def test_declared_native_model_is_sent_as_is_and_fans_out(native_stack) -> None:
    stack, upstream = native_stack
    with http_client(stack) as rest:
        answer = rest.post(GENERATIONS, json={"model": "dall-e-3", "prompt": "x", "n": 3,
                                              "quality": "hd", "style": "vivid"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-served"] == "dall-e-3"
    sent = [r.json for r in upstream.requests_to("generations")]
    assert len(sent) == 3, "dall-e-3 makes one image per call: n=3 is three calls"
    assert {(s["model"], s["n"], s["quality"], s["style"], s["response_format"])
            for s in sent} == {("dall-e-3", 1, "hd", "vivid", "b64_json")}
    assert len({httpx.get(d["url"]).content for d in answer.json()["data"]}) >= 1
