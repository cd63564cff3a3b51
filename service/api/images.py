"""The ImageService servicer: each door's request turned into the pipeline's terms, the
pipeline's answer into the door's message (service/generation/pipeline.py does the work).

It never imports an SDK and never builds an error body: it raises HubError.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.api import httpbody_pb2

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc as pb_grpc
from service.api import openai_streams, streams
from service.api.listing import NOT_SET_WHEN_ZERO, ModelListing
from service.contract import json_codec
from service.contract.edits import edit_request, variation_request
from service.contract.images import generate_response, image_request, response_and_payloads
from service.generation.pipeline import Pipeline
from service.generation.request import Answer, ImageRequest
from service.rpc import wire
from service.rpc.call import Call, current_call
from service.store.base import ImageStore
from service.store.signing import UrlSigner

STREAMING_CALL = "StreamGenerate (REST: POST /api/images/generations:stream)"
OPENAI_STREAM = "stream: true"


class ImageServicer(pb_grpc.ImageServiceServicer):
    def __init__(self, *, pipeline: Pipeline, listing: ModelListing, store: ImageStore,
                 signer: UrlSigner, stream_heartbeat: float) -> None:
        self._pipeline = pipeline
        self._listing = listing
        self._store = store
        self._signer = signer
        self._heartbeat = stream_heartbeat

    async def Generate(self, request: pb.GenerateRequest,  # type: ignore[override]
                       context: object) -> wire.Wire:
        """The answer written once, its image bytes straight into the GenerateResponse's
        wire bytes (service.rpc.wire)."""
        return wire.grpc_answer(*response_and_payloads(await self._generate(request)))

    async def GenerateHttp(self, request: pb.GenerateHttpRequest,  # type: ignore[override]
                           context: object) -> wire.Wire:
        """The REST door: the same answer as JSON, its image bytes base64-encoded once,
        straight into the HttpBody's wire bytes (service.rpc.wire)."""
        generate_request = json_codec.decode(request.body.data, pb.GenerateRequest)
        return wire.rest_answer(*response_and_payloads(await self._generate(generate_request)))

    async def GenerateOrStreamHttp(self, request: pb.GenerateOrStreamHttpRequest,
                                   context: object
                                   ) -> AsyncIterator[wire.Wire | httpbody_pb2.HttpBody]:
        """The REST door: the same answer as JSON, its image bytes base64-encoded once,
        straight into the HttpBody's wire bytes (service.rpc.wire); or OpenAI's stream."""
        asked = image_request(json_codec.decode(request.body.data, pb.GenerateRequest))
        async for chunk in self._openai_answer(asked, edit=bool(asked.image)):
            yield chunk

    async def _generate(self, request: pb.GenerateRequest) -> Answer:
        return await self._pipeline.generate(current_call(), image_request(request),
                                             refuse_streams=STREAMING_CALL)

    async def EditHttp(self, request: pb.EditHttpRequest,
                       context: object) -> AsyncIterator[wire.Wire | httpbody_pb2.HttpBody]:
        """OpenAI's `POST /images/edits`: one JSON answer, or its stream of events."""
        asked = edit_request(request.body.content_type, request.body.data)
        async for chunk in self._openai_answer(asked, edit=True):
            yield chunk

    async def VariationHttp(self, request: pb.VariationHttpRequest,  # type: ignore[override]
                            context: object) -> wire.Wire:
        """OpenAI's `POST /images/variations`: an edit of one image with a fixed prompt."""
        asked = variation_request(request.body.content_type, request.body.data)
        answer = await self._pipeline.generate(current_call(), asked,
                                               refuse_streams=OPENAI_STREAM)
        return wire.rest_answer(*response_and_payloads(answer))

    async def _openai_answer(self, asked: ImageRequest, *, edit: bool
                             ) -> AsyncIterator[wire.Wire | httpbody_pb2.HttpBody]:
        call = current_call()
        if not asked.stream:
            answer = await self._pipeline.generate(call, asked, refuse_streams=OPENAI_STREAM)
            written = wire.rest_answer(*response_and_payloads(answer))
            del answer  # its images, not kept while gRPC copies the answer out
            call.answered_once = True  # recorded before it leaves, as GenerateHttp's answer
            yield written
            return
        asked = openai_streams.streamed(asked)
        call.response_headers.append(("cache-control", "no-cache"))
        async for chunk in openai_streams.openai_events(
                self._stream(call, asked), edit=edit, request_id=call.request_id,
                on_error=lambda error: setattr(call, "failure", error)):
            yield httpbody_pb2.HttpBody(content_type=streams.EVENT_STREAM, data=chunk)

    async def StreamGenerate(self, request: pb.StreamGenerateRequest,
                             context: object) -> AsyncIterator[pb.StreamGenerateResponse]:
        async for event in self._stream(current_call(), image_request(request.request)):
            yield event

    async def StreamGenerateHttp(self, request: pb.StreamGenerateHttpRequest,
                                 context: object) -> AsyncIterator[httpbody_pb2.HttpBody]:
        call = current_call()
        generate_request = json_codec.decode(request.body.data, pb.GenerateRequest)
        call.response_headers.append(("cache-control", "no-cache"))
        async for chunk in streams.server_sent_events(
                self._stream(call, image_request(generate_request)),
                edit=bool(generate_request.image),
                request_id=call.request_id, on_error=lambda error: setattr(call, "failure", error)):
            yield httpbody_pb2.HttpBody(content_type=streams.EVENT_STREAM, data=chunk)

    def _stream(self, call: Call, asked: ImageRequest
                ) -> AsyncIterator[pb.StreamGenerateResponse]:
        async def generate(events: streams.EventQueue) -> pb.GenerateResponse:
            return generate_response(await self._pipeline.generate(call, asked, events))

        return streams.stream(generate, previews=max(asked.partial_images or 0, 0),
                              heartbeat=self._heartbeat, on_failure=call.charge.sent)

    async def GetImage(self, request: pb.GetImageRequest, context: object) -> httpbody_pb2.HttpBody:
        self._signer.verify(request.name, request.expires, request.signature)
        data, content_type = await self._store.get(request.name)
        charge = current_call().charge  # not a usage record: for the metrics and the log line
        charge.response_format, charge.images, charge.bytes = "file", 1, len(data)
        return httpbody_pb2.HttpBody(content_type=content_type, data=data)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: object) -> pb.ListModelsResponse:
        return await self._listing.answer()

    async def GetModel(self, request: pb.GetModelRequest, context: object) -> pb.Model:
        return await self._listing.one(request.id)

    async def ListModelsHttp(self, request: pb.ListModelsRequest,
                             context: object) -> httpbody_pb2.HttpBody:
        """`GET /api/models`: ListModels' answer as JSON, without what is not set."""
        return json_codec.answer(await self._listing.answer(), NOT_SET_WHEN_ZERO)

    async def GetModelHttp(self, request: pb.GetModelRequest,
                           context: object) -> httpbody_pb2.HttpBody:
        """`GET /api/models/{id}`: GetModel's answer as JSON, without what is not set."""
        return json_codec.answer(await self._listing.one(request.id), NOT_SET_WHEN_ZERO)
