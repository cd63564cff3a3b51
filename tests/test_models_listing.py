"""GET /api/models and ImageService.ListModels: every model, its capabilities, its lifecycle,
and whether its provider is configured here; readable by the openai SDK's models.list()."""

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
