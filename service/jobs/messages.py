"""A job as JobService tells it: its state, and its answer told afresh from the kept
answer (urls signed anew, b64_json images read back from the store)."""

from __future__ import annotations

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import job_service_pb2 as job_pb
from service.contract.images import generate_response
from service.db import JobRow
from service.errors import NotFound
from service.generation import answers
from service.generation.answers import KeptAnswer
from service.jobs.queue import SUCCEEDED
from service.store.base import ImageStore
from service.store.signing import UrlSigner


class JobMessages:
    def __init__(self, store: ImageStore, signer: UrlSigner) -> None:
        self._store = store
        self._signer = signer

    async def job(self, row: JobRow, *, with_images: bool = True) -> job_pb.Job:
        """The job as GetJob answers it; `with_images` False leaves b64_json answers out."""
        job = job_pb.Job(id=row.id, status=row.status, created=int(row.created_at.timestamp()),
                         model=row.model, n=row.n, webhook_url=row.webhook_url or "",
                         webhook_status=row.webhook_status or "")
        if row.finished_at is not None:
            job.finished = int(row.finished_at.timestamp())
        if row.status == SUCCEEDED and row.result is not None:
            kept = KeptAnswer.from_json(row.result)
            if with_images or kept.response_format == "url":
                job.result.CopyFrom(await self._told(row, kept))
        if row.error is not None:
            job.error.CopyFrom(job_pb.JobError(**row.error))
        return job

    async def _told(self, row: JobRow, kept: KeptAnswer) -> pb.GenerateResponse:
        try:
            return generate_response(await answers.told(kept, self._store, self._signer))
        except NotFound:
            raise NotFound(f"The images of job '{row.id}' are no longer kept: stored images "
                           "are deleted after the image retention period.", param="id",
                           reason="JOB_IMAGES_EXPIRED") from None
