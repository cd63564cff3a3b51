"""Fixtures: the real stack once per session, and clients for both doors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from aigne.hub.v1 import image_service_pb2_grpc
from tests.stack import TEST_KEY, Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    """The openai SDK pointed at our REST door, with its own retries off."""
    with openai.OpenAI(api_key=TEST_KEY, base_url=stack.api_url, max_retries=0,
                       timeout=120) as sdk:
        yield sdk


@pytest.fixture(scope="session")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=120,
                      headers={"Authorization": f"Bearer {TEST_KEY}"}) as raw:
        yield raw


@pytest.fixture(scope="session", params=["envoy", "server"])
def stub(request: pytest.FixtureRequest,
         stack: Stack) -> Iterator[image_service_pb2_grpc.ImageServiceStub]:
    """The generated stub, through Envoy's port and on the server's own port."""
    target = stack.envoy_target if request.param == "envoy" else stack.server_target
    options = [("grpc.max_receive_message_length", 256 << 20),
               ("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(target, options=options) as channel:
        yield image_service_pb2_grpc.ImageServiceStub(channel)


GRPC_AUTH = (("authorization", f"Bearer {TEST_KEY}"),)


@pytest.fixture
def out_dir(request: pytest.FixtureRequest) -> Path:
    """Where a test may leave files for a person to look at (test-output/<test name>)."""
    path = Path(__file__).resolve().parents[1] / "test-output" / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path
