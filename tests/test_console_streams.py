"""The console's playground streams and edits the OpenAI way, in headless Chromium through the
real stack: partial images show as they arrive and give way to the finished image; an edit
goes out as OpenAI's multipart form with its mask (to the fake OpenAI upstream, and to the
local renderer, which honours it); a server error, before the stream or in it, shows clearly.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import ConsolePage, console_page
from tests.conftest import open_image
from tests.fakes.images import picture
from tests.fakes.openai_fake import FakeOpenAI
from tests.fakes.server import Reply
from tests.stack import TEST_KEY, Stack
from tests.test_edits import RED, half_mask, png

# Every image added to the results grid, as the page drew it: a preview (with its index) or
# the finished image, its size, and the colour of its bottom-right pixel (the fake OpenAI
# paints image i in (40 i mod 256, 120, 200), its partial image p of image i as image
# 100 + 10 i + p).
RECORD_IMAGES = """() => {
  window.seenImages = [];
  const look = (img) => {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const paint = canvas.getContext("2d");
    paint.drawImage(img, 0, 0);
    const [r, g, b] = paint.getImageData(canvas.width - 2, canvas.height - 2, 1, 1).data;
    window.seenImages.push({ preview: img.classList.contains("preview"),
      index: img.dataset.partialImageIndex ?? null, size: [img.naturalWidth, img.naturalHeight],
      rgb: [r, g, b] });
  };
  const record = (img) => {
    if (!img.closest("#images")) return;
    if (img.complete && img.naturalWidth) look(img);
    else img.addEventListener("load", () => look(img), { once: true });
  };
  new MutationObserver((changes) => {
    for (const change of changes) {
      for (const node of change.addedNodes) {
        if (node.tagName === "IMG") record(node);
        else if (node.querySelectorAll) node.querySelectorAll("img").forEach(record);
      }
    }
  }).observe(document.getElementById("main"), { childList: true, subtree: true });
}"""


def fake_colour(index: int) -> list[int]:
    return [(40 * index) % 256, 120, 200]


@pytest.fixture
def provider_console(browser: Browser, provider_stack: Stack, fakes,
                     out_dir: Path) -> Iterator[ConsolePage]:
    """The console of the stack whose OpenAI upstream is the fake, with fresh fakes."""
    with console_page(browser, provider_stack.base_url, out_dir) as page:
        yield page


@pytest.fixture
def slow_stream(fake_openai: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The fake OpenAI with 0.8 s between its stream's events: long enough to see each one."""
    before = fake_openai.stream_event_delay
    fake_openai.stream_event_delay = 0.8
    yield fake_openai
    fake_openai.stream_event_delay = before


@pytest.fixture
def local_console(browser: Browser, stack: Stack, out_dir: Path) -> Iterator[ConsolePage]:
    """The console of the stack with no provider key: the local renderer serves."""
    with console_page(browser, stack.base_url, out_dir) as page:
        yield page


def fill_request(page: Page, model: str, prompt: str, *, size: str | None = None,
                 stream: bool = False, partial_images: str | None = None) -> None:
    page.select_option("#model", model)
    if size:
        page.select_option("#size", size)
    page.fill("#prompt", prompt)
    if stream:
        page.check("#stream")
    if partial_images is not None:
        page.fill("#partial_images", partial_images)


def finished_images(page: Page, count: int) -> None:
    page.wait_for_function(
        "n => [...document.querySelectorAll('#images img:not(.preview)')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length === n", arg=count,
        timeout=60_000)


def choose_files(page: Page, selector: str, *files: tuple[str, bytes]) -> None:
    page.set_input_files(selector, [{"name": name, "mimeType": "image/png", "buffer": data}
                                    for name, data in files])


def test_streams_partial_images_then_the_final_one(provider_console: ConsolePage,
                                                   slow_stream: FakeOpenAI) -> None:
    page = provider_console.open("playground", key=TEST_KEY)
    assert page.locator("#partial_images").is_disabled()
    fill_request(page, "gpt-image-2", "a fox in the snow", size="1024x1024", stream=True,
                 partial_images="2")
    expect(page.locator("#response_format")).to_be_hidden()  # streams carry the bytes
    expect(page.locator("#code-curl")).to_contain_text('"stream": true')
    expect(page.locator("#code-curl")).to_contain_text('"partial_images": 2')
    page.evaluate(RECORD_IMAGES)
    page.click("#generate")

    for index in ("0", "1"):  # each preview is in the page, the fake's 0.8 s apart
        preview = page.locator(f'#images img.preview[data-partial-image-index="{index}"]')
        expect(preview).to_be_visible(timeout=30_000)
    expect(page.locator("#images .preview-note")).to_have_text("Preview 2")
    provider_console.screenshot("stream-preview")
    finished_images(page, 1)
    expect(page.locator("#images img.preview")).to_have_count(0)
    expect(page.locator(".result-head")).to_contain_text("streamed with 2 partial images")
    expect(page.locator(".result-head")).to_contain_text("served by gpt-image-2")
    expect(page.locator("#images .size")).to_have_text("1024 × 1024")

    seen = page.evaluate("window.seenImages")
    assert [(s["preview"], s["index"]) for s in seen] == [(True, "0"), (True, "1"),
                                                          (False, None)]
    assert [s["rgb"] for s in seen] == [fake_colour(100), fake_colour(101), fake_colour(0)]
    assert all(s["size"] == [1024, 1024] for s in seen)
    sent = slow_stream.requests_to("generations")[0].json
    assert (sent["stream"], sent["partial_images"]) == (True, 2)
    provider_console.screenshot("stream-done")
    provider_console.assert_clean()


def test_an_edit_sends_its_mask_to_openai_and_streams(provider_console: ConsolePage,
                                                      fakes) -> None:
    page = provider_console.open("playground", key=TEST_KEY)
    fill_request(page, "gpt-image-2", "add a hat", size="1024x1024", stream=True,
                 partial_images="1")
    page.click(".edit-box summary")
    choose_files(page, "#image", ("cat.png", png(1024, 1024)))
    choose_files(page, "#mask", ("hat-mask.png", half_mask(1024, 1024)))
    expect(page.locator(".mask-field img")).to_have_count(1)
    expect(page.locator("#code-curl")).to_contain_text("/api/images/edits")
    expect(page.locator("#code-curl")).to_contain_text("mask=@mask.png")
    page.click('[role="tab"][data-lang="python"]')
    expect(page.locator("#code-python")).to_contain_text("client.images.edit(")
    page.evaluate(RECORD_IMAGES)
    page.click("#generate")

    finished_images(page, 1)
    seen = page.evaluate("window.seenImages")
    assert [s["preview"] for s in seen] == [True, False]
    edit = fakes[0].requests_to("edits")[0]
    mask = open_image(edit.files["mask"][0][2]).convert("RGBA")  # the mask as chosen
    assert mask.size == (1024, 1024)
    assert (mask.getpixel((10, 10))[3], mask.getpixel((1000, 10))[3]) == (255, 0)
    images = [f for name in ("image", "image[]") for f in edit.files.get(name, [])]
    assert len(images) == 1
    assert edit.fields["stream"] == ["true"] and edit.fields["partial_images"] == ["1"]
    assert edit.fields["prompt"] == ["add a hat"]
    provider_console.screenshot("edit-with-mask")
    provider_console.assert_clean()


def test_the_local_renderer_honours_a_mask_from_the_page(local_console: ConsolePage) -> None:
    page = local_console.open("playground", key=TEST_KEY)
    fill_request(page, "local", "paint the right half", size="256x256")
    page.click(".edit-box summary")
    choose_files(page, "#image", ("red.png", png(256, 256)))
    choose_files(page, "#mask", ("small-mask.png", half_mask(128, 128)))
    page.click("#generate")

    error = page.locator(".error-box[role=alert]")  # a mask of the wrong size: the hub's 400
    expect(error).to_be_visible(timeout=30_000)
    expect(error.locator(".error-title")).to_contain_text("HTTP 400")
    expect(error.locator(".error-param")).to_have_text("Field: mask")
    assert page.locator("#mask").get_attribute("aria-invalid") == "true"
    local_console.screenshot("mask-wrong-size")

    choose_files(page, "#mask", ("mask.png", half_mask(256, 256)))
    page.evaluate(RECORD_IMAGES)
    page.click("#generate")
    finished_images(page, 1)
    halves = page.evaluate("""() => {
      const img = document.querySelector('#images img');
      const canvas = document.createElement('canvas');
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const paint = canvas.getContext('2d');
      paint.drawImage(img, 0, 0);
      const grid = (x0) => [0, 1, 2, 3, 4, 5, 6].flatMap((i) => [0, 1, 2, 3, 4, 5, 6]
        .map((j) => [...paint.getImageData(x0 + 16 * i, 8 + 36 * j, 1, 1).data]));
      return { left: grid(8), right: grid(136), size: [canvas.width, canvas.height] };
    }""")
    red = list(RED)
    assert halves["size"] == [256, 256]
    assert all(pixel == red for pixel in halves["left"]), "kept where the mask is opaque"
    assert any(pixel != red for pixel in halves["right"]), \
        "painted where the mask is transparent"
    local_console.assert_clean("400 POST /api/images/edits")


def test_an_error_event_shows_clearly(provider_console: ConsolePage, fakes) -> None:
    preview = {"type": "image_generation.partial_image", "partial_image_index": 0,
               "b64_json": base64.b64encode(picture(1024, 1024)).decode(), "created_at": 1,
               "size": "1024x1024", "quality": "auto", "background": "auto",
               "output_format": "png"}
    refusal = {"error": {"message": "Your request was rejected by the safety system.",
                         "type": "image_generation_user_error", "param": None,
                         "code": "moderation_blocked"}}
    fakes[0].script("generations", Reply(200, events=[sse(preview), sse(refusal, "error")],
                                         event_delay=0.5))
    page = provider_console.open("playground", key=TEST_KEY)
    fill_request(page, "gpt-image-2", "a fox", size="1024x1024", stream=True,
                 partial_images="1")
    page.click("#generate")

    error = page.locator(".result-head .error-box[role=alert]")
    expect(error).to_be_visible(timeout=30_000)
    expect(error.locator(".error-title")).to_contain_text("The stream stopped with an error")
    expect(error.locator(".error-title")).to_contain_text("content_policy_violation")
    expect(error.locator(".error-message")).to_contain_text("rejected by the safety system")
    expect(page.locator("#images img.preview")).to_have_count(1)  # what arrived stays
    expect(page.locator("#images figcaption")).to_have_text(
        "Preview only: this image was not finished.")
    expect(page.locator("#generate")).to_be_enabled()
    provider_console.screenshot("stream-error-event")

    # An error before the stream began is the HTTP error, naming the field.
    page.fill("#partial_images", "5")
    page.click("#generate")
    expect(page.locator(".error-box .error-param")).to_have_text("Field: partial_images",
                                                                 timeout=30_000)
    expect(page.locator(".error-box .error-title")).to_contain_text("HTTP 400")
    assert page.locator("#partial_images").get_attribute("aria-invalid") == "true"
    provider_console.assert_clean("400 POST /api/images/generations")


def sse(data: dict[str, Any], name: str | None = None) -> bytes:
    return f"event: {name or data['type']}\ndata: {json.dumps(data)}\n\n".encode()
