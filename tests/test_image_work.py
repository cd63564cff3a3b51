"""Image work cannot take the server over (issue 18): an 83 KB edit asking for gigapixels
(an all-zero 8000x8000 PNG, n=10 at 2048x2048, on the local renderer) once took the server
from 156 MB to 3.3 GB and held another key's 16x16 request 5.5 s. Now the pixels of one
request are bounded (refused with a 400 naming the limit), a source is decoded once per
request, and drawing runs on a few threads of its own, one image at a time per request."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import open_image
from tests.stack import TEST_KEY, Stack
from tests.test_bad_input import assert_error

OTHER_KEY = "ahk-other-" + "o" * 40
GENERATIONS = "/api/images/generations"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"AIGNE_HUB_API_KEYS": f"{TEST_KEY},{OTHER_KEY}"}
    with Stack(tmp_path_factory.mktemp("image-work") / "var", env) as running:
        yield running


def zero_png(width: int, height: int) -> str:
    """An all-zero greyscale PNG as a data URL: a few KB for millions of pixels."""
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def peak_rss_mb(stack: Stack) -> float:
    """The server process's peak resident memory so far (VmHWM), in MB."""
    assert stack.process is not None
    status = Path(f"/proc/{stack.process.pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024


def generate(stack: Stack, key: str, **body: object) -> httpx.Response:
    return httpx.post(f"{stack.base_url}{GENERATIONS}", timeout=120,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "local", "prompt": "a quiet sea",
                            "response_format": "b64_json", **body})


def test_a_tiny_request_for_gigapixels_is_refused_naming_the_limit(stack: Stack) -> None:
    source = zero_png(8000, 8000)
    assert len(source) < 120_000
    before = peak_rss_mb(stack)
    answer = generate(stack, TEST_KEY, image=source, n=10, size="2048x2048")
    error = assert_error(answer, 400, "n", "too_many_pixels")
    assert "64,000,000" in error["message"], error
    assert peak_rss_mb(stack) < before + 400, "the source was decoded anyway"
    many = [zero_png(5000, 4000)] * 4  # 80 M pixels of sources, whatever the model
    assert_error(generate(stack, TEST_KEY, image=many, size="16x16"), 400, "image",
                 "image_too_large")


def test_heavy_image_work_leaves_another_keys_small_request_prompt(stack: Stack) -> None:
    """54 M pixels (a 4000x3000 source, ten 2048x2048 images) are allowed, and take the
    renderer seconds; meanwhile another key's 16x16 request is answered."""
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        heavy = pool.submit(generate, stack, TEST_KEY, image=zero_png(4000, 3000), n=10,
                            size="2048x2048")
        time.sleep(1.0)  # the heavy request is being drawn
        small_started = time.monotonic()
        small = generate(stack, OTHER_KEY, size="16x16")
        small_seconds = time.monotonic() - small_started
        heavy_still_running = not heavy.done()
        answer = heavy.result()
        heavy_seconds = time.monotonic() - started
    assert small.status_code == 200, small.text
    assert open_image(base64.b64decode(small.json()["data"][0]["b64_json"])).size == (16, 16)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]) == 10
    assert small_seconds < 5, (small_seconds, heavy_seconds)
    assert heavy_still_running or small_seconds < heavy_seconds / 2, (small_seconds,
                                                                      heavy_seconds)
    assert peak_rss_mb(stack) < 1500
