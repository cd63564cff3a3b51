"""Which RPC methods are public, which need an admin key, which leave a usage record,
which generate images (bounded by admission), and which are quiet probes: what the
interceptor (service/rpc/interceptor.py) is told at start-up."""

from __future__ import annotations

from grpc_health.v1 import health_pb2

from aigne.hub.v1 import (
    admin_service_pb2,
    console_service_pb2,
    deployment_service_pb2,
    image_service_pb2,
    job_service_pb2,
    probe_service_pb2,
    usage_service_pb2,
)

SERVICE_NAME = image_service_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name
ADMIN_SERVICE = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
USAGE_SERVICE = usage_service_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name
DEPLOYMENT_SERVICE = deployment_service_pb2.DESCRIPTOR.services_by_name[
    "DeploymentService"].full_name
CONSOLE_SERVICE = console_service_pb2.DESCRIPTOR.services_by_name["ConsoleService"].full_name
JOB_SERVICE = job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
PROBE_SERVICE = probe_service_pb2.DESCRIPTOR.services_by_name["ProbeService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Probes and health checks: public, and neither logged at INFO nor counted in the metrics.
QUIET_METHODS = frozenset({
    f"/{PROBE_SERVICE}/Live",
    f"/{PROBE_SERVICE}/Ready",
    f"/{HEALTH_SERVICE}/Check",
})
PUBLIC_METHODS = frozenset({
    f"/{SERVICE_NAME}/GetImage",
    # The web console's files and the OpenAPI document: the page holds no secret; the API
    # calls it makes carry the key the person enters.
    f"/{CONSOLE_SERVICE}/GetConsoleAsset",
    f"/{CONSOLE_SERVICE}/GetOpenApiDocument",
    *QUIET_METHODS,
})
ADMIN_PREFIXES = (f"/{ADMIN_SERVICE}/", f"/{DEPLOYMENT_SERVICE}/")
GENERATIONS = ("Generate", "GenerateHttp", "GenerateOrStreamHttp", "StreamGenerate",
               "StreamGenerateHttp", "EditHttp", "VariationHttp")
METERED_METHODS = frozenset({
    *(f"/{SERVICE_NAME}/{m}" for m in GENERATIONS),
    f"/{JOB_SERVICE}/CreateJob", f"/{JOB_SERVICE}/CreateJobHttp",  # failures; jobs record
})
# Calls that generate images in this process: bounded in number (back-pressure), refused
# while draining, waited for at shutdown. Jobs run in the background under their own bound.
GENERATION_METHODS = frozenset(f"/{SERVICE_NAME}/{m}" for m in GENERATIONS)
# Every service of the server (health aside), for health checks and reflection.
SERVICES = (SERVICE_NAME, ADMIN_SERVICE, USAGE_SERVICE, DEPLOYMENT_SERVICE, CONSOLE_SERVICE,
            JOB_SERVICE, PROBE_SERVICE)
# What server reflection lists: it answers without a key, so not the admin services.
REFLECTED_SERVICES = tuple(s for s in SERVICES if s not in (ADMIN_SERVICE, DEPLOYMENT_SERVICE))
