"""The model listing (`GET /api/models`, ListModels): every name in the registry with its
capabilities, its lifecycle today, the model that serves it, and the deployments that do,
with their health and last test. Its REST answers leave out what is not set (every empty
string, and the numbers in NOT_SET_WHEN_ZERO) rather than printing 0 or ""; what the openai
SDKs and the console read stays: `created`, flags, counts and lists, at 0, false and [] too."""

from __future__ import annotations

from datetime import UTC, date, datetime

from google.protobuf import timestamp_pb2

from aigne.hub.v1 import image_service_pb2 as pb
from service.catalog.deployments import Deployment
from service.catalog.models import Lifecycle, ModelRegistry, ModelSpec, Route
from service.errors import NotFound
from service.routing.router import Router

# Numbers whose 0 means "not set": a deployment's test never run, a size rule limit that
# does not apply. Every other number means what it says at 0 (`created`, which the openai
# SDKs read; `max_input_images` of a model that cannot edit), as does every flag at false.
NOT_SET_WHEN_ZERO = frozenset({
    f"{pb.ModelDeployment.DESCRIPTOR.full_name}.last_test_latency_ms",
    *(f"{pb.SizeRule.DESCRIPTOR.full_name}.{name}"
      for name in ("max_ratio", "min_pixels", "max_pixels")),
})


class ModelListing:
    def __init__(self, registry: ModelRegistry, router: Router) -> None:
        self._registry = registry
        self._router = router

    async def answer(self) -> pb.ListModelsResponse:
        deployments = await self._router.deployments()
        specs = sorted(self._registry, key=lambda s: (s.provider != "local", s.provider, s.name))
        return pb.ListModelsResponse(object="list",
                                     data=[self._model(s, deployments) for s in specs])

    async def one(self, name: str) -> pb.Model:
        """The listing's entry for `name`; NotFound naming `model` when it is no model here."""
        return self._model(self._registry.get(name), await self._router.deployments())

    def _model(self, spec: ModelSpec, deployments: list[Deployment]) -> pb.Model:
        try:
            route: Route | None = self._registry.route(spec.name)
        except NotFound:  # retired, and an operator switched its translation off
            route = None
        served = route.served if route else spec
        serving = [d for d in deployments if d.serves(served)] if route else []
        rule = spec.size_rule
        return pb.Model(
            id=spec.name, object="model", owned_by=spec.owned_by or spec.provider,
            provider=spec.provider, description=spec.description, sizes=spec.sizes,
            size_rule=pb.SizeRule(
                multiple_of=rule.multiple_of, min_edge=rule.min_edge, max_edge=rule.max_edge,
                max_ratio=0 if rule.max_ratio == float("inf") else rule.max_ratio,
                min_pixels=rule.min_pixels, max_pixels=rule.max_pixels or 0) if rule else None,
            aspect_ratios=spec.aspect_ratios, default_size=spec.default_size,
            max_n_per_call=spec.max_n_per_call, qualities=spec.qualities,
            default_quality=spec.default_quality, styles=spec.styles,
            output_formats=spec.output_formats, backgrounds=spec.backgrounds,
            moderations=spec.moderations, edits=spec.edits,
            max_input_images=spec.max_input_images, prompt_limit=spec.prompt_limit,
            lifecycle=(route.lifecycle if route else Lifecycle.RETIRED).value,
            deprecated_on=_iso(spec.deprecated_on), shutdown_on=_iso(spec.shutdown_on),
            successor=spec.successor or "", available=route is not None,
            served_by=served.name if route else "",
            provider_configured=any(d.enabled for d in serving),
            deployments=[_deployment(d) for d in serving],
            partial_images=served.partial_images,
            default_response_format=spec.default_response_format, masks=spec.masks,
            input_fidelities=spec.input_fidelities)


def _deployment(deployment: Deployment) -> pb.ModelDeployment:
    return pb.ModelDeployment(
        name=deployment.name, kind=deployment.kind, state=deployment.state(datetime.now(UTC)),
        last_test_status=deployment.last_test_status or "",
        last_test_latency_ms=deployment.last_test_ms or 0.0,
        last_test_time=timestamp(deployment.last_test_at))


def timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _iso(day: date | None) -> str:
    return day.isoformat() if day else ""
