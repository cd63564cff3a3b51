"""GET /api/models and ImageService.ListModels: every model, its capabilities, its lifecycle,
and whether its provider is configured here; readable by the openai SDK's models.list(); its
REST answer without what is not set."""

from __future__ import annotations

import grpc
import httpx
import openai
import pytest

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc
from tests.conftest import GRPC_AUTH, http_client, openai_client
from tests.openai_schema import assert_openai
from tests.stack import Stack


def listing(stack: Stack) -> dict[str, dict]:
    with http_client(stack) as rest:
        answer = rest.get("/api/models")
    assert answer.status_code == 200, answer.text
    assert answer.json()["object"] == "list"
    return {m["id"]: m for m in answer.json()["data"]}


def test_listing_on_a_machine_without_provider_keys(stack: Stack) -> None:
    models = listing(stack)
    assert next(iter(models)) == "local"
    local = models["local"]
    assert local["provider_configured"] is True and local["edits"] is True
    assert local["max_n_per_call"] == 10 and local["owned_by"] == "aigne"
    assert local["size_rule"]["max_edge"] == 2048
    assert models["gpt-image-2"]["provider_configured"] is False
    dall_e_2 = models["dall-e-2"]
    assert (dall_e_2["lifecycle"], dall_e_2["successor"], dall_e_2["served_by"]) == (
        "retired", "gpt-image-2", "gpt-image-2")
    assert dall_e_2["sizes"] == ["256x256", "512x512", "1024x1024"]
    assert dall_e_2["shutdown_on"] == "2026-05-12" and dall_e_2["available"] is True
    assert models["dall-e-3"]["styles"] == ["vivid", "natural"]
    assert models["dall-e-3"]["max_n_per_call"] == 1
    defaults = {name: models[name]["default_response_format"] for name in (
        "gpt-image-2", "gpt-image-1.5", "gpt-image-1", "dall-e-2", "dall-e-3", "local",
        "gemini-3.1-flash-image", "imagen-4.0-generate-001")}
    assert defaults == {"gpt-image-2": "b64_json", "gpt-image-1.5": "b64_json",
                        "gpt-image-1": "b64_json", "dall-e-2": "url", "dall-e-3": "url",
                        "local": "url", "gemini-3.1-flash-image": "url",
                        "imagen-4.0-generate-001": "url"}
    assert (local["masks"], models["gpt-image-2"]["masks"], models["dall-e-2"]["masks"],
            models["gemini-3.1-flash-image"]["masks"]) == (True, True, True, False)
    assert models["gpt-image-2"]["input_fidelities"] == ["low", "high"]
    assert models["gpt-image-1-mini"]["input_fidelities"] == []


def test_listing_with_providers(provider_stack: Stack) -> None:
    models = listing(provider_stack)
    assert models["gpt-image-2"]["provider_configured"] is True
    assert models["gemini-3.1-flash-image"]["aspect_ratios"][:2] == ["1:1", "2:3"]
    assert models["imagen-4.0-generate-001"]["lifecycle"] == "active", "the operator's file"
    assert models["gpt-image-1"]["available"] is False, "the refuse switch"
    assert models["gpt-image-test-deprecated"]["lifecycle"] == "deprecated"


def test_openai_sdk_reads_the_listing(stack: Stack) -> None:
    with openai_client(stack) as client:
        ids = [model.id for model in client.models.list()]
    assert {"local", "gpt-image-2", "dall-e-2", "gemini-3.1-flash-image"} <= set(ids)


def test_openai_sdk_retrieves_one_model(stack: Stack) -> None:
    with openai_client(stack) as client:
        raw = client.models.with_raw_response.retrieve("gpt-image-2")
        assert_openai(raw.http_response.json(), "Model")
        model = raw.parse()
        assert (model.id, model.object, model.owned_by) == ("gpt-image-2", "model", "openai")
        assert raw.http_response.json()["default_response_format"] == "b64_json"
        assert client.models.retrieve("gpt-image-1.5").id == "gpt-image-1.5"
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve("no-such-model")
    assert missing.value.body["param"] == "model"  # type: ignore[index]
    with grpc.insecure_channel(stack.envoy_target) as channel:
        reply = image_service_pb2_grpc.ImageServiceStub(channel).GetModel(
            pb.GetModelRequest(id="local"), metadata=GRPC_AUTH, timeout=30)
    assert reply.edits and reply.masks


def test_list_models_over_grpc(stack: Stack) -> None:
    with grpc.insecure_channel(stack.envoy_target) as channel:
        reply = image_service_pb2_grpc.ImageServiceStub(channel).ListModels(
            pb.ListModelsRequest(), metadata=GRPC_AUTH, timeout=30)
    models = {m.id: m for m in reply.data}
    assert models["gpt-image-2"].size_rule.multiple_of == 16
    assert models["gpt-image-2"].size_rule.max_pixels == 8_294_400


def test_listing_needs_a_key(stack: Stack) -> None:
    answer = httpx.get(f"{stack.base_url}/api/models")
    assert answer.status_code == 401


def test_rest_listing_leaves_out_what_is_not_set_and_keeps_zeros_that_matter(
        stack: Stack) -> None:
    """Envoy printed the listing with every unset field: `"shutdown_on": ""` for a model with
    no sunset, `"last_test_latency_ms": 0` for a deployment never tested, `"min_pixels": 0`
    for a rule without that bound. The server writes it now: what is not set is absent;
    `created` 0, flags at false, `max_input_images` 0 and empty lists are there, and the
    openai SDK still lists and retrieves. gRPC carries the same messages as before."""
    with http_client(stack) as rest:
        answer = rest.get("/api/models")
        one = rest.get("/api/models/gpt-image-2")
    assert answer.headers["content-type"].startswith("application/json")
    assert_openai(answer.json(), "ListModelsResponse")
    models = {m["id"]: m for m in answer.json()["data"]}
    assert one.status_code == 200 and one.json() == models["gpt-image-2"]
    current, local, dall_e_3 = models["gpt-image-2"], models["local"], models["dall-e-3"]
    assert {"deprecated_on", "shutdown_on", "successor"}.isdisjoint(current), current
    assert (current["created"], current["provider_configured"], current["deployments"]) == (
        0, False, [])
    assert current["served_by"] == "gpt-image-2" and current["styles"] == []
    assert current["size_rule"]["min_pixels"] == 655_360
    assert {"min_pixels", "max_pixels"}.isdisjoint(local["size_rule"]), local["size_rule"]
    assert local["size_rule"]["max_ratio"] == 8 and local["partial_images"] is False
    (deployment,) = local["deployments"]
    assert deployment == {"name": "local", "kind": "local", "state": "healthy"}, "never tested"
    assert (dall_e_3["edits"], dall_e_3["max_input_images"], dall_e_3["masks"]) == (
        False, 0, False)
    assert dall_e_3["default_response_format"] == "url" and dall_e_3["input_fidelities"] == []

    with openai_client(stack) as client:
        assert {"local", "dall-e-3"} <= {model.id for model in client.models.list()}
        retrieved = client.models.retrieve("local")
    assert (retrieved.id, retrieved.object, retrieved.created, retrieved.owned_by) == (
        "local", "model", 0, "aigne")
    with grpc.insecure_channel(stack.envoy_target) as channel:
        typed = image_service_pb2_grpc.ImageServiceStub(channel).GetModel(
            pb.GetModelRequest(id="local"), metadata=GRPC_AUTH, timeout=30)
    assert (typed.shutdown_on, typed.successor, typed.size_rule.min_pixels) == ("", "", 0)
    assert typed.deployments[0].last_test_latency_ms == 0
    assert not typed.deployments[0].HasField("last_test_time")
