"""Fixtures: the real stack (server and Envoy), fake providers, and clients for both doors; a
real PostgreSQL server, and a stack per database (SQLite, PostgreSQL) for the tests of keys,
quotas and usage; headless Chromium for the web console's tests."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from PIL import Image
from playwright.sync_api import Browser

from aigne.hub.v1 import image_service_pb2_grpc
from tests.browser import chromium
from tests.fakes.google_fake import FakeGoogle
from tests.fakes.images import picture
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import FakeServer, Received, Reply
from tests.hub import ADMIN_KEY, Hub
from tests.postgres import PostgresServer
from tests.stack import TEST_KEY, Stack

DATA = Path(__file__).with_name("data")
GRPC_AUTH = (("authorization", f"Bearer {TEST_KEY}"),)
GRPC_OPTIONS = [("grpc.max_receive_message_length", 256 << 20),
                ("grpc.max_send_message_length", 64 << 20)]


def open_image(data: bytes) -> Image.Image:
    """`data` decoded as an image file (raises if it is not a whole one)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def openai_client(stack: Stack, **options: object) -> openai.OpenAI:
    """The openai SDK pointed at a stack's REST door, with its own retries off."""
    return openai.OpenAI(api_key=TEST_KEY, base_url=stack.api_url,
                         **{"max_retries": 0, "timeout": 120, **options})  # type: ignore[arg-type]


def http_client(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, timeout=120,
                        headers={"Authorization": f"Bearer {TEST_KEY}"})


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The embedded defaults: no provider key, so `local` is the default model."""
    with Stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai_client(stack) as sdk:
        yield sdk


@pytest.fixture(scope="session")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with http_client(stack) as raw:
        yield raw


def stub_of(stack: Stack, door: str) -> Iterator[image_service_pb2_grpc.ImageServiceStub]:
    """The generated stub to `stack`, through Envoy's port ("envoy") or on the server's own
    port ("server"); the body of the stub fixtures."""
    target = stack.envoy_target if door == "envoy" else stack.server_target
    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        yield image_service_pb2_grpc.ImageServiceStub(channel)


@pytest.fixture(scope="session", params=["envoy", "server"])
def stub(request: pytest.FixtureRequest,
         stack: Stack) -> Iterator[image_service_pb2_grpc.ImageServiceStub]:
    """The generated stub, through Envoy's port and on the server's own port."""
    yield from stub_of(stack, request.param)


class ImageHost(FakeServer):
    """A web server with pictures on it, for edits that give `image` as a URL."""

    def route(self, method: str, path: str) -> str | None:
        return path.split("?")[0].lstrip("/") or None

    def answer(self, route: str, request: Received) -> Reply:
        if route.startswith("redirect/"):
            return Reply(302, raw=b"", headers={"location": "/" + route.split("/", 1)[1]})
        if route.startswith("missing"):
            return Reply(404, raw=b"not found", headers={"content-type": "text/plain"})
        if route == "not-an-image.png":
            return Reply(200, raw=b"<html>hello</html>", headers={"content-type": "text/html"})
        w, h = (int(x) for x in route.split(".")[0].split("x")) if "x" in route else (300, 200)
        return Reply(200, raw=picture(w, h), headers={"content-type": "image/png"})


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def fake_google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost().start()
    yield host
    host.stop()


def provider_env(fake_openai: FakeOpenAI, fake_google: FakeGoogle,
                 image_host: ImageHost) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": fake_openai.api_key,
        "OPENAI_BASE_URL": f"{fake_openai.url}/v1",
        "GEMINI_API_KEY": fake_google.api_key,
        "GOOGLE_GEMINI_BASE_URL": fake_google.url,
        "AIGNE_HUB_VERTEX_API_KEY": fake_google.api_key,
        "GOOGLE_VERTEX_BASE_URL": fake_google.url,
        "AIGNE_HUB_IMAGE_URL_ALLOWLIST": f"127.0.0.1:{image_host.port}",
        "AIGNE_HUB_MODELS_FILE": str(DATA / "models.toml"),
        "AIGNE_HUB_UPSTREAM_RETRY_BASE_SECONDS": "0.05",
        "AIGNE_HUB_ADMIN_API_KEYS": ADMIN_KEY,
    }


@pytest.fixture(scope="session")
def provider_stack(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI,
                   fake_google: FakeGoogle, image_host: ImageHost) -> Iterator[Stack]:
    """A stack whose OpenAI and Google providers are the fakes on 127.0.0.1."""
    env = provider_env(fake_openai, fake_google, image_host)
    with Stack(tmp_path_factory.mktemp("providers"), env) as running:
        yield running


@pytest.fixture
def provider_rest(provider_stack: Stack, fakes) -> Iterator[httpx.Client]:
    """Raw HTTP to the provider stack, with fresh fakes."""
    with http_client(provider_stack) as client:
        yield client


@pytest.fixture(params=["envoy", "server"])
def provider_stub(request: pytest.FixtureRequest, provider_stack: Stack,
                  fakes) -> Iterator[image_service_pb2_grpc.ImageServiceStub]:
    """The generated stub to the provider stack, both ways, with fresh fakes."""
    yield from stub_of(provider_stack, request.param)


def restore_credentials(stack: Stack) -> None:
    """Enable every credential again: tests of 401s and 429s leave them disabled or resting."""
    with httpx.Client(base_url=stack.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        listing = admin.get("/api/admin/deployments")
        assert listing.status_code == 200, listing.text
        for deployment in listing.json()["deployments"]:
            for credential in deployment["credentials"]:
                if credential["state"] != "active":
                    admin.put(f"/api/admin/credentials/{credential['id']}",
                              json={"enabled": True, "weight": credential["weight"]})


@pytest.fixture
def fakes(provider_stack: Stack, fake_openai: FakeOpenAI, fake_google: FakeGoogle,
          image_host: ImageHost) -> Iterator[tuple[FakeOpenAI, FakeGoogle, ImageHost]]:
    """The fakes, with no scripts and no recorded requests left over from other tests, and
    the provider stack's credentials all usable."""
    for fake in (fake_openai, fake_google, image_host):
        fake.clear()
    restore_credentials(provider_stack)
    yield fake_openai, fake_google, image_host


@pytest.fixture
def out_dir(request: pytest.FixtureRequest) -> Path:
    """Where a test may leave files for a person to look at (test-output/<test name>)."""
    path = Path(__file__).resolve().parents[1] / "test-output" / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium (tests/browser.py), for the tests that use the web console."""
    with chromium() as running:
        yield running


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
