"""Fixtures: the real stack once per session, and clients for both doors; a real
PostgreSQL server, and a stack per database (SQLite, PostgreSQL) for the tests of keys,
quotas and usage."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from aigne.hub.v1 import image_service_pb2_grpc
from tests.hub import Hub
from tests.postgres import PostgresServer
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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session; each user of it makes its own database."""
    with PostgresServer() as server:
        yield server


DATABASES = ["sqlite", "postgres"]


def database_url(kind: str, request: pytest.FixtureRequest, tmp: Path) -> str:
    """A new, empty database of `kind`."""
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / 'hub.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"hub_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=DATABASES)
def fresh_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty database, once per kind."""
    return database_url(request.param, request, tmp_path)


@pytest.fixture(scope="session", params=DATABASES)
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Hub]:
    """The stack on SQLite, then on PostgreSQL, with an admin key from the configuration
    and tests/models.toml. At the end its log must hold none of the secrets handed out."""
    var_dir = tmp_path_factory.mktemp(f"hub-{request.param}")
    url = database_url(request.param, request, var_dir)
    with Stack(var_dir, env=Hub.env(url)) as stack:
        running = Hub(stack, request.param)
        yield running
        running.close()
    log = stack.log_path.read_text(errors="replace")
    leaked = [secret[:12] for secret in running.secrets if secret in log]
    assert not leaked, f"secrets in the stack's log: {leaked}"
