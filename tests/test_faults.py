"""Faults of what the service stands on: providers that break mid-answer, a full image store,
a read-only database. Each gives the caller a clear error, and loses nothing accepted:
other requests in flight complete, stored images stay served, no debris is left, and the
server stays up.

Provider failures of OpenAI (5xx, garbage, truncated image, reset, hang) and their
retries are in test_providers_openai.py; this file adds Google's and what happens around
a failure."""

from __future__ import annotations

import base64
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ImageHost, http_client, provider_env
from tests.fakes.google_fake import FakeGoogle
from tests.fakes.images import picture
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Reply
from tests.stack import Stack, wait_until
from tests.test_bad_input import assert_error

GENERATIONS = "/api/images/generations"
GEMINI = {"model": "gemini-3.1-flash-image", "prompt": "x"}
NOISE = picture(1024, 1024, noise=True)  # a real model's ~3 MB PNG


def gemini_image(data: bytes) -> Reply:
    return Reply(200, {"candidates": [{"content": {"role": "model", "parts": [
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(data).decode()}}]},
        "finishReason": "STOP"}]})


@pytest.fixture
def rest(provider_stack: Stack, fakes) -> Iterator[httpx.Client]:
    with http_client(provider_stack) as client:
        yield client


@pytest.mark.parametrize(("failure", "code"), [
    (Reply(200, raw=b'{"candidates": [{"content": '), "upstream_bad_response"),
    (Reply(200, raw=b"<html>502 Bad Gateway</html>",
           headers={"content-type": "text/html"}), "upstream_bad_response"),
    (gemini_image(NOISE[:len(NOISE) // 2]), "upstream_error"),
    (gemini_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 100), "upstream_error"),
    (Reply(reset=True), "upstream_unreachable"),
])
def test_google_that_keeps_breaking_is_502_after_retries(rest: httpx.Client, fakes,
                                                         failure: Reply, code: str) -> None:
    fakes[1].script("generateContent", failure, failure, failure)
    assert_error(rest.post(GENERATIONS, json=GEMINI), 502, None, code)
    assert len(fakes[1].requests_to("generateContent")) == 3, "one try and two retries"


def test_a_breaking_provider_does_not_disturb_requests_in_flight(rest: httpx.Client,
                                                                 provider_stack: Stack,
                                                                 fakes) -> None:
    fake_openai = fakes[0]
    fake_openai.script("generations", fake_openai.success(delay=1.5))
    slow: list[httpx.Response] = []

    def steady() -> None:
        with http_client(provider_stack) as client:
            slow.append(client.post(GENERATIONS, json={"model": "gpt-image-2",
                                                       "prompt": "steady",
                                                       "response_format": "url"}))

    thread = threading.Thread(target=steady)
    thread.start()
    wait_until(lambda: len(fake_openai.requests_to("generations")) == 1)

    fake_openai.script("generations", *[Reply(reset=True)] * 3)
    assert_error(rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x"}),
                 502, None, "upstream_unreachable")
    fakes[1].script("generateContent", Reply(200, raw=b"garbage"), Reply(200, raw=b"garbage"),
                    Reply(200, raw=b"garbage"))
    assert_error(rest.post(GENERATIONS, json=GEMINI), 502, None, "upstream_bad_response")

    thread.join(timeout=30)
    assert slow[0].status_code == 200, slow[0].text
    assert httpx.get(slow[0].json()["data"][0]["url"]).status_code == 200
    assert rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x"}).status_code == 200


@pytest.fixture(scope="module")
def small_disk_stack(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI,
                     fake_google: FakeGoogle, image_host: ImageHost) -> Iterator[Stack]:
    """A stack that may write no file over 1 MiB (RLIMIT_FSIZE): its image store is full
    for a real model's 3 MB image, without root or a special file system."""
    env = provider_env(fake_openai, fake_google, image_host)
    with Stack(tmp_path_factory.mktemp("small-disk"), env, file_size_limit=1 << 20) as running:
        yield running


def test_full_image_store_is_503_store_full_and_loses_nothing(small_disk_stack: Stack,
                                                              fakes) -> None:
    fake_openai = fakes[0]
    with http_client(small_disk_stack) as rest:
        before = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "small",
                                              "response_format": "url"})
        assert before.status_code == 200, before.text
        stored_url = before.json()["data"][0]["url"]

        big = Reply(200, {"created": 1, "data": [{"b64_json": base64.b64encode(NOISE).decode()}]})
        fake_openai.script("generations", big, big)
        full = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "big",
                                            "response_format": "url"})
        body = assert_error(full, 503, None, "store_full")
        assert "b64_json" in body["message"], "the message says what still works"
        assert full.headers["retry-after"] == "30"

        inline = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "big",
                                              "response_format": "b64_json"})
        assert inline.status_code == 200, "answers that need no store still work"
        assert base64.b64decode(inline.json()["data"][0]["b64_json"]) == NOISE

        fetched = httpx.get(stored_url)
        assert fetched.status_code == 200 and fetched.content[:8] == b"\x89PNG\r\n\x1a\n"
    store = small_disk_stack.var_dir / "images"
    assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")], "no half-written file"
    assert small_disk_stack.process is not None and small_disk_stack.process.poll() is None


def test_read_only_database_refuses_what_it_cannot_account_for_clearly(
        tmp_path: Path, fake_openai: FakeOpenAI, fake_google: FakeGoogle,
        image_host: ImageHost, fakes) -> None:
    env = provider_env(fake_openai, fake_google, image_host)
    with Stack(tmp_path, env) as first:  # the database as a first start leaves it
        first.cli("keys", "create", "made before")
    database = tmp_path / "hub.db"
    # Opened read-only: what a read-only file or mount gives, even to root.
    read_only = {**env, "AIGNE_HUB_DATABASE_URL":
                 f"sqlite+aiosqlite:///file:{database}?mode=ro&uri=true"}
    with Stack(tmp_path, read_only) as stack:
        with http_client(stack) as rest:
            # A generation must reserve quota and leave a usage record: with no way to write
            # them, it is refused before any upstream call, with a clear 503.
            answer = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x",
                                                  "n": 2})
            assert_error(answer, 503, None, "database_read_only")
            assert answer.headers["retry-after"]
            assert fakes[0].requests_to("generations") == []
            assert rest.get("/api/models").status_code == 200, "reads still work"
            assert rest.get("/readyz").status_code == 200
        with pytest.raises(subprocess.CalledProcessError) as caught:
            stack.cli("keys", "create", "made while read-only")
        assert caught.value.returncode == 1
        assert "error: The database refuses writes" in caught.value.stderr
        assert "Traceback" not in caught.value.stderr
        listed = stack.cli("keys", "list").stdout
        assert "made before" in listed and "made while read-only" not in listed
