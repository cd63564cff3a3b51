"""The JobService servicer: generations accepted now and run in the background
(service/jobs/runner.py), over gRPC and REST (`/api/images/jobs`).

CreateJob checks the request as Generate does (its 4xx answers are Generate's), checks the
webhook URL, claims the idempotency key, reserves the quota, and keeps the job. From then
on the job owns its quota reservation and writes its own usage record when it ends.
"""

from __future__ import annotations

from google.api import httpbody_pb2

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import job_service_pb2 as job_pb
from aigne.hub.v1 import job_service_pb2_grpc as job_grpc
from service.accounting.idempotency import REPLAYED_HEADER, Idempotency
from service.contract import json_codec
from service.contract.images import fingerprint, image_request
from service.errors import InvalidArgument
from service.generation.pipeline import Pipeline
from service.jobs.runner import Jobs
from service.jobs.webhooks import Webhooks
from service.rpc.call import Call, current_call

STREAMING_CALL = "StreamGenerate (REST: POST /api/images/generations:stream), not jobs"


class JobServicer(job_grpc.JobServiceServicer):
    def __init__(self, *, pipeline: Pipeline, jobs: Jobs, idempotency: Idempotency,
                 webhooks: Webhooks) -> None:
        self._pipeline = pipeline
        self._jobs = jobs
        self._idempotency = idempotency
        self._webhooks = webhooks

    async def CreateJob(self, request: job_pb.CreateJobRequest,
                        context: object) -> job_pb.CreateJobResponse:
        return await self._create(current_call(), request.request, request.webhook_url)

    async def CreateJobHttp(self, request: job_pb.CreateJobHttpRequest,
                            context: object) -> httpbody_pb2.HttpBody:
        body = json_codec.load_object(request.body.data)
        webhook_url = body.pop("webhook_url", None) or ""
        if not isinstance(webhook_url, str):
            raise InvalidArgument("webhook_url must be a string", param="webhook_url",
                                  reason="INVALID_TYPE")
        generate_request = json_codec.from_object(body, pb.GenerateRequest)
        response = await self._create(current_call(), generate_request, webhook_url)
        return json_codec.answer(response, int64_as_string=False)  # (numbers, as ever)

    async def GetJob(self, request: job_pb.GetJobRequest, context: object) -> job_pb.GetJobResponse:
        row = await self._jobs.get(request.id, current_call().caller)
        return job_pb.GetJobResponse(job=await self._jobs.message(row))

    async def GetJobHttp(self, request: job_pb.GetJobHttpRequest,
                         context: object) -> httpbody_pb2.HttpBody:
        response = await self.GetJob(job_pb.GetJobRequest(id=request.id), context)
        return json_codec.answer(response, int64_as_string=False)

    async def _create(self, call: Call, request: pb.GenerateRequest,
                      webhook_url: str) -> job_pb.CreateJobResponse:
        plan, _ = await self._pipeline.plan(call, image_request(request),
                                            refuse_streams=STREAMING_CALL)
        if webhook_url:
            await self._webhooks.check(webhook_url)
        claim = await self._idempotency.claim(
            call.caller.id, call.idempotency_key, "job",
            fingerprint("job", request.SerializeToString(deterministic=True),
                        webhook_url.encode()), call.request_id, call.remaining())
        if claim.answer is not None:  # a retry: the job the first attempt made
            call.charge.record = False
            call.response_headers.append(REPLAYED_HEADER)
            row = await self._jobs.get(str(claim.answer["job_id"]), call.caller)
        else:
            try:
                reservation = await call.charge.reserve(plan.job.n, tracked=False)
                row = await self._jobs.create(call, request, webhook_url, reservation)
                call.charge.record = False  # the job records its usage when it ends
                await claim.complete({"job_id": row.id})
            except BaseException:
                await claim.release()
                raise
        return job_pb.CreateJobResponse(
            job=await self._jobs.message(row),
            webhook_secret=self._webhooks.secret_for(call.caller.id) if webhook_url else "")
