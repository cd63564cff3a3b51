"""DeploymentService: deployments and credentials through the admin API (admin keys only;
the interceptor refuses the rest). Each `XxxHttp` method is the REST door of `Xxx`: the same
answer as JSON the server writes (contract/json_codec), where what is not set (a default
base URL, a last test never run) is left out instead of reading "" or 0."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aigne.hub.v1 import deployment_service_pb2 as pb
from aigne.hub.v1 import deployment_service_pb2_grpc as pb_grpc
from service.api.listing import timestamp
from service.catalog.deployments import Credential, Deployment
from service.catalog.models import Lifecycle, ModelRegistry, ModelSpec, Size
from service.contract import json_codec
from service.errors import InvalidArgument, NotFound
from service.providers.base import ImageJob
from service.routing.deployments import DeploymentStore
from service.routing.router import Router

TEST_SECONDS = 60.0
TEST_PREFERENCE = ("local", "gpt-image-2", "gemini-3.1-flash-lite-image", "gemini-3.1-flash-image")
# Numbers whose 0 means "not set": left out of REST answers (empty strings always are).
# Priority, weights, flags and counts mean what they say at 0 and false, and stay.
NOT_SET_WHEN_ZERO = frozenset({f"{pb.Deployment.DESCRIPTOR.full_name}.last_test_latency_ms"})


class DeploymentServicer(pb_grpc.DeploymentServiceServicer):
    def __init__(self, store: DeploymentStore, router: Router, registry: ModelRegistry) -> None:
        self._store = store
        self._router = router
        self._registry = registry

    async def CreateDeployment(self, request: pb.CreateDeploymentRequest,
                               context: object) -> pb.CreateDeploymentResponse:
        created = await self._store.create(self._fields(request.deployment))
        self._router.forget_snapshot()
        return pb.CreateDeploymentResponse(deployment=view(created))

    async def ListDeployments(self, request: pb.ListDeploymentsRequest,
                              context: object) -> pb.ListDeploymentsResponse:
        self._router.forget_snapshot()
        deployments = await self._router.deployments()
        return pb.ListDeploymentsResponse(deployments=[
            view(d) for d in sorted(deployments, key=lambda d: (d.priority, d.name))])

    async def UpdateDeployment(self, request: pb.UpdateDeploymentRequest,
                               context: object) -> pb.UpdateDeploymentResponse:
        stored = await self._store.get(request.deployment_id)
        fields = self._fields(request.deployment)
        if fields.kind != stored.kind:
            raise InvalidArgument("kind cannot change; add a new deployment", param="kind")
        updated = await self._store.update(Deployment(
            **{**fields.__dict__, "id": stored.id, "credentials": stored.credentials}))
        self._router.forget_snapshot()
        return pb.UpdateDeploymentResponse(deployment=view(updated))

    async def DeleteDeployment(self, request: pb.DeleteDeploymentRequest,
                               context: object) -> pb.DeleteDeploymentResponse:
        await self._store.delete((await self._store.get(request.deployment_id)).id)
        self._router.forget_snapshot()
        return pb.DeleteDeploymentResponse()

    async def AddCredential(self, request: pb.AddCredentialRequest,
                            context: object) -> pb.AddCredentialResponse:
        credential = await self._store.add_credential(
            request.deployment_id, request.name, request.secret,
            weight=request.weight if request.HasField("weight") else 1)
        self._router.forget_snapshot()
        return pb.AddCredentialResponse(credential=credential_view(credential))

    async def UpdateCredential(self, request: pb.UpdateCredentialRequest,
                               context: object) -> pb.UpdateCredentialResponse:
        weight = request.weight if request.HasField("weight") else 1
        if weight < 1:
            raise InvalidArgument("weight must be at least 1", param="weight")
        credential = self._router.set_builtin_credential(
            request.credential_id, weight=weight, enabled=request.enabled)
        if credential is None:
            credential = await self._store.update_credential(
                request.credential_id, enabled=request.enabled, weight=weight)
            self._router.forget_snapshot()
        return pb.UpdateCredentialResponse(credential=credential_view(credential))

    async def DeleteCredential(self, request: pb.DeleteCredentialRequest,
                               context: object) -> pb.DeleteCredentialResponse:
        await self._store.delete_credential(request.credential_id)
        self._router.forget_snapshot()
        return pb.DeleteCredentialResponse()

    async def TestDeployments(self, request: pb.TestDeploymentsRequest,
                              context: object) -> pb.TestDeploymentsResponse:
        self._router.forget_snapshot()
        chosen = [d for d in await self._router.deployments()
                  if d.enabled and request.deployment_id in ("", d.id, d.name)]
        if request.deployment_id and not chosen:
            raise NotFound(f"no enabled deployment '{request.deployment_id}'",
                           param="deployment_id", reason="DEPLOYMENT_NOT_FOUND")
        return pb.TestDeploymentsResponse(results=[await self._test(d) for d in chosen])

    CreateDeploymentHttp = json_codec.rest_door(CreateDeployment, NOT_SET_WHEN_ZERO)
    ListDeploymentsHttp = json_codec.rest_door(ListDeployments, NOT_SET_WHEN_ZERO)
    UpdateDeploymentHttp = json_codec.rest_door(UpdateDeployment, NOT_SET_WHEN_ZERO)
    DeleteDeploymentHttp = json_codec.rest_door(DeleteDeployment, NOT_SET_WHEN_ZERO)
    AddCredentialHttp = json_codec.rest_door(AddCredential, NOT_SET_WHEN_ZERO)
    UpdateCredentialHttp = json_codec.rest_door(UpdateCredential, NOT_SET_WHEN_ZERO)
    DeleteCredentialHttp = json_codec.rest_door(DeleteCredential, NOT_SET_WHEN_ZERO)
    TestDeploymentsHttp = json_codec.rest_door(TestDeployments, NOT_SET_WHEN_ZERO)

    async def _test(self, deployment: Deployment) -> pb.DeploymentTest:
        spec = self._test_model(deployment)
        if spec is None:
            return pb.DeploymentTest(deployment_id=deployment.id, name=deployment.name,
                                     status="NO_MODEL", message="it serves no active model")
        status, message, milliseconds = await self._router.test(deployment, tiny_job(spec))
        return pb.DeploymentTest(deployment_id=deployment.id, name=deployment.name,
                                 model=spec.name, status=status, message=message,
                                 latency_ms=round(milliseconds, 1))

    def _test_model(self, deployment: Deployment) -> ModelSpec | None:
        serving = [s for s in self._registry if deployment.serves(s)
                   and s.lifecycle is not Lifecycle.RETIRED]
        serving.sort(key=lambda s: (TEST_PREFERENCE.index(s.name) if s.name in TEST_PREFERENCE
                                    else len(TEST_PREFERENCE), s.name))
        return serving[0] if serving else None

    def _fields(self, message: pb.Deployment) -> Deployment:
        return Deployment(
            id="", name=message.name.strip(), kind=message.kind,
            base_url=message.base_url or None, api_version=message.api_version or None,
            options=dict(message.options), models=tuple(message.models),
            model_map=dict(message.model_map), priority=message.priority,
            weight=message.weight or 1, enabled=message.enabled)


def tiny_job(spec: ModelSpec) -> ImageJob:
    """The cheapest request `spec` takes: one image, its smallest size, its lowest quality."""
    if spec.size_rule is not None:
        size: Size | None = spec.size_rule.nearest(Size(1, 1))
    elif spec.aspect_ratios:
        size = Size(1024, 1024)
    else:
        size = min((s for s in map(Size.parse, spec.sizes) if s), key=lambda s: s.pixels,
                   default=None)
    quality = "low" if "low" in spec.qualities else spec.default_quality
    return ImageJob(prompt="A small test image: a blue square.", model=spec, n=1, size=size,
                    quality=quality, output_format=spec.output_formats[0],
                    deadline=time.monotonic() + TEST_SECONDS, request_id="deployment-test")


def view(deployment: Deployment) -> pb.Deployment:
    now = datetime.now(UTC)
    return pb.Deployment(
        id=deployment.id, name=deployment.name, kind=deployment.kind,
        base_url=deployment.base_url or "", api_version=deployment.api_version or "",
        options=deployment.options, models=deployment.models, model_map=deployment.model_map,
        priority=deployment.priority, weight=deployment.weight, enabled=deployment.enabled,
        source=deployment.source, credentials=[credential_view(c) for c in deployment.credentials],
        state=deployment.state(now), cooldown_until=_future(deployment.cooldown_until, now),
        consecutive_failures=deployment.consecutive_failures,
        last_error=deployment.last_error or "", last_test_status=deployment.last_test_status or "",
        last_test_latency_ms=deployment.last_test_ms or 0.0,
        last_test_time=timestamp(deployment.last_test_at))


def credential_view(credential: Credential) -> pb.Credential:
    now = datetime.now(UTC)
    return pb.Credential(
        id=credential.id, name=credential.name, weight=credential.weight,
        enabled=credential.enabled, state=credential.state(now),
        disabled_reason=credential.disabled_reason or "",
        disable_time=timestamp(credential.disabled_at),
        cooldown_until=_future(credential.cooldown_until, now),
        create_time=timestamp(credential.created_at))


def _future(moment: datetime | None, now: datetime):  # type: ignore[no-untyped-def]
    return timestamp(moment) if moment and moment > now else None
