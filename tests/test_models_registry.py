"""The model registry as data: defaults, operator overrides, lifecycle by date, size rules,
and how a retired model's request is translated for its successor."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aigne.hub.v1 import image_service_pb2 as pb
from service.catalog.models import Lifecycle, Route, Size, load_registry
from service.contract.images import image_request
from service.errors import InvalidArgument, NotFound
from service.generation import validation


def plan(request: pb.GenerateRequest, route: Route) -> validation.GenerationPlan:
    return validation.plan(image_request(request), route)

REGISTRY = load_registry()
GPT_IMAGE_2 = REGISTRY.get("gpt-image-2")


def test_every_default_model_routes_to_an_active_model() -> None:
    for spec in REGISTRY:
        route = REGISTRY.route(spec.name, date(2026, 11, 27))
        assert route.served.lifecycle is not Lifecycle.RETIRED, spec.name
        assert route.served.provider == spec.provider or spec.provider == "vertex"


def test_a_deprecated_model_is_retired_on_its_shutdown_day() -> None:
    before = REGISTRY.route("gpt-image-1.5", date(2026, 11, 30))
    on_the_day = REGISTRY.route("gpt-image-1.5", date(2026, 12, 1))
    assert (before.served.name, before.lifecycle) == ("gpt-image-1.5", Lifecycle.DEPRECATED)
    assert (on_the_day.served.name, on_the_day.lifecycle) == ("gpt-image-2", Lifecycle.RETIRED)


def test_operator_override_changes_only_the_named_model(tmp_path: Path) -> None:
    extra = tmp_path / "models.toml"
    extra.write_text('[models."imagen-4.0-generate-001"]\nlifecycle = "active"\n'
                     '[models.dall-e-3]\nserve_retired = false\n'
                     '[models.my-model]\nbase = "gpt-image-2"\nupstream_name = "gpt-image-2"\n')
    registry = load_registry(extra)
    assert registry.route("imagen-4.0-generate-001").served.name == "imagen-4.0-generate-001"
    assert registry.route("imagen-4.0-ultra-generate-001").served.name == "gemini-3-pro-image"
    assert registry.get("my-model").size_rule == GPT_IMAGE_2.size_rule
    with pytest.raises(NotFound) as refused:
        registry.route("dall-e-3")
    assert refused.value.reason == "MODEL_RETIRED" and "gpt-image-2" in refused.value.message


@pytest.mark.parametrize("text", ['[models.a]\nbase = "b"\n[models.b]\nbase = "a"\n',
                                  '[models.a]\nbase = "nowhere"\n'])
def test_broken_bases_are_refused_at_start(tmp_path: Path, text: str) -> None:
    extra = tmp_path / "models.toml"
    extra.write_text(text)
    with pytest.raises(ValueError, match="base"):
        load_registry(extra)


@given(st.integers(1, 6000), st.integers(1, 6000))
def test_nearest_size_always_fits_the_rule(width: int, height: int) -> None:
    rule = GPT_IMAGE_2.size_rule
    assert rule is not None
    nearest = rule.nearest(Size(width, height))
    assert rule.problem(nearest) is None
    if rule.problem(Size(width, height)) is None:
        assert nearest == Size(width, height)


def test_dall_e_2_request_is_translated_for_gpt_image_2() -> None:
    checked = plan(pb.GenerateRequest(prompt="a cat", model="dall-e-2", size="256x256"),
                   REGISTRY.route("dall-e-2"))
    assert checked.size == Size(256, 256)
    assert checked.job.model.name == "gpt-image-2" and checked.job.quality == "low"
    assert GPT_IMAGE_2.size_problem(checked.job.size) is None


def test_dall_e_3_style_becomes_a_prompt_hint() -> None:
    checked = plan(pb.GenerateRequest(prompt="a city", model="dall-e-3", quality="hd",
                                      style="vivid"), REGISTRY.route("dall-e-3"))
    assert checked.job.quality == "high" and checked.job.style is None
    assert checked.job.prompt.startswith("a city") and "vivid" in checked.job.prompt


def test_retired_models_keep_their_own_prompt_limits() -> None:
    with pytest.raises(InvalidArgument) as refused:
        plan(pb.GenerateRequest(prompt="x" * 1001, model="dall-e-2"), REGISTRY.route("dall-e-2"))
    assert refused.value.param == "prompt"
    plan(pb.GenerateRequest(prompt="x" * 1001, model="gpt-image-2"),
         REGISTRY.route("gpt-image-2"))


def test_gemini_size_classes_and_ratios() -> None:
    gemini = REGISTRY.get("gemini-3.1-flash-image")
    assert gemini.nearest_aspect_ratio(Size(1920, 1080)) == "16:9"
    assert gemini.nearest_aspect_ratio(Size(1000, 1100)) == "1:1"
    assert gemini.image_size_class(Size(1024, 1024)) == "1K"
    assert gemini.image_size_class(Size(5000, 5000)) == "4K"
