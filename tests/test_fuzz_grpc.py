"""Property-based fuzzing of the gRPC door, on the server's own port and through Envoy,
with the providers configured and answering (the fakes): every generated GenerateRequest,
with any metadata, gets its images or a documented client-error status carrying
google.rpc.ErrorInfo; so do broken protobuf bytes. Never INTERNAL or UNKNOWN, and the
server stays up."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import event, given
from hypothesis import strategies as st

from aigne.hub.v1 import console_service_pb2 as console_pb
from aigne.hub.v1 import console_service_pb2_grpc, image_service_pb2_grpc
from aigne.hub.v1 import image_service_pb2 as pb
from tests.conftest import GRPC_OPTIONS, ImageHost
from tests.fuzzing import (  # noqa: F401 (server_stays_up: an autouse fixture)
    examples,
    on_image_host,
    proto_fields,
    server_stays_up,
)
from tests.stack import TEST_KEY, Stack

CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


@pytest.fixture(scope="module", params=["server", "envoy"])
def channel(request: pytest.FixtureRequest, provider_stack: Stack) -> Iterator[grpc.Channel]:
    target = provider_stack.server_target if request.param == "server" else \
        provider_stack.envoy_target
    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as opened:
        yield opened


def assert_answered(call: object, request: pb.GenerateRequest | None) -> None:
    """`call` is the reply or the RpcError of one Generate call."""
    event("OK" if isinstance(call, pb.GenerateResponse) else call.code().name)  # type: ignore[attr-defined]
    if isinstance(call, pb.GenerateResponse):
        assert request is not None
        assert len(call.data) == (request.n if request.HasField("n") else 1)
        assert all(image.WhichOneof("content") for image in call.data)
        return
    assert isinstance(call, grpc.RpcError)
    assert call.code() in CLIENT_ERRORS, (call.code(), call.details(), request)
    status = rpc_status.from_call(call)  # type: ignore[arg-type]
    assert status is not None, call.details()
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details)
    assert info.domain == "aigne.dev" and info.reason


def printable(max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                   max_size=max_size)


@examples(500)
@given(fields=proto_fields(),
       authorization=st.sampled_from([f"Bearer {TEST_KEY}"] * 3 + ["?"]).flatmap(
           lambda a: printable(40) if a == "?" else st.just(a)),
       request_id=st.one_of(st.none(), printable(60)))
def test_generate_requests(channel: grpc.Channel, image_host: ImageHost, fakes, fields: dict,
                           authorization: str, request_id: str | None) -> None:
    fields = {**fields, "image": [on_image_host(i.encode(), image_host.url).decode()
                                  for i in fields.get("image", [])]}
    request = pb.GenerateRequest(**fields)
    metadata = [("authorization", authorization)]
    if request_id is not None:
        metadata.append(("x-request-id", request_id))
    try:
        reply = image_service_pb2_grpc.ImageServiceStub(channel).Generate(
            request, metadata=metadata, timeout=60)
    except grpc.RpcError as error:
        assert_answered(error, request)
    else:
        assert_answered(reply, request)


@examples(300)
@given(data=st.binary(max_size=80))
def test_broken_protobuf_bytes(channel: grpc.Channel, data: bytes) -> None:
    generate = channel.unary_unary("/aigne.hub.v1.ImageService/Generate")
    try:
        reply = generate(data, metadata=[("authorization", f"Bearer {TEST_KEY}")], timeout=60)
    except grpc.RpcError as error:
        assert_answered(error, None)
    else:
        assert_answered(pb.GenerateResponse.FromString(reply),
                        pb.GenerateRequest.FromString(data))


@examples(200)
@given(name=st.text(max_size=40), expires=st.integers(-(2**63), 2**63 - 1),
       signature=st.text(max_size=50))
def test_get_image_and_list_models(channel: grpc.Channel, name: str, expires: int,
                                   signature: str) -> None:
    stub = image_service_pb2_grpc.ImageServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetImage(pb.GetImageRequest(name=name, expires=expires, signature=signature),
                      timeout=30)
    assert_answered(caught.value, None)
    assert stub.ListModels(pb.ListModelsRequest(), timeout=30,
                           metadata=[("authorization", f"Bearer {TEST_KEY}")]).data


@examples(200)
@given(path=st.one_of(st.text(max_size=40), st.text(min_size=250, max_size=400),
                      st.integers(256, 5000).map(lambda n: "a" * n),
                      st.tuples(st.text(max_size=10), st.text(max_size=10)).map("\x00".join),
                      st.lists(st.sampled_from(["a", "..", ".", "", "index.html", "x" * 300]),
                               max_size=6).map("/".join)))
def test_console_asset_paths(channel: grpc.Channel, path: str) -> None:
    """Issue 18: paths over 255 characters and NULs made GetConsoleAsset fail INTERNAL."""
    stub = console_service_pb2_grpc.ConsoleServiceStub(channel)
    try:
        stub.GetConsoleAsset(console_pb.GetConsoleAssetRequest(path=path), timeout=30)
    except grpc.RpcError as error:
        assert_answered(error, None)
