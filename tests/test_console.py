"""The web console, served by the stack through Envoy, used in headless Chromium the way a
person would: generate images, read an error, hand out and revoke a key, read usage, read
the API reference. Each test leaves screenshots in its test-output folder."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Route, expect

from tests.browser import ConsolePage, console_page
from tests.hub import ADMIN_KEY, GENERATIONS, Hub
from tests.stack import ROOT, TEST_KEY, Stack

XSS_PROMPT = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def console_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A stack on SQLite with an admin key (tests.hub.ADMIN_KEY) and a plain one (TEST_KEY).
    At the end its log must hold none of the secrets handed out, in the page or not."""
    var_dir = tmp_path_factory.mktemp("console")
    with Stack(var_dir, env=Hub.env(f"sqlite+aiosqlite:///{var_dir / 'hub.db'}")) as stack:
        hub = Hub(stack, "sqlite")
        yield hub
        hub.close()
    log = stack.log_path.read_text(errors="replace")
    assert not [secret[:12] for secret in hub.secrets if secret in log]


@pytest.fixture
def console(browser: Browser, console_hub: Hub, out_dir: Path) -> Iterator[ConsolePage]:
    with console_page(browser, console_hub.stack.base_url, out_dir) as page:
        yield page


# ---- served by the stack ---------------------------------------------------------------

def test_console_is_served_with_a_strict_content_security_policy(console_hub: Hub) -> None:
    base = console_hub.stack.base_url
    with httpx.Client(base_url=base, timeout=30) as http:  # no API key
        page = http.get("/console/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'self'"
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert directives["object-src"] == "'none'"
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "<script>" not in page.text  # no inline script to allow

        script = http.get("/console/js/main.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.headers["content-security-policy"] == csp
        assert http.get("/console/css/console.css").headers["content-type"].startswith("text/css")

        for path in ("/", "/console"):  # what a browser asks for
            moved = http.get(path, headers={"Accept": "text/html,application/xhtml+xml,*/*"})
            assert moved.status_code == 301, path
            assert moved.headers["location"].endswith("/console/")
        assert http.get("/").status_code == 404  # API clients: an unknown path

        for missing in ("/console/nope.js", "/console/.hidden.js", "/console/%2e%2e/README.md",
                        "/console/js/../../service/config.py", "/console/js"):
            answer = http.get(missing)
            assert answer.status_code == 404, missing
            assert answer.json()["error"]["code"] in ("not_found",), missing


def test_openapi_document_is_served_and_lists_the_api(console_hub: Hub) -> None:
    answer = httpx.get(f"{console_hub.stack.base_url}/api/openapi.json", timeout=30)  # no key
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["x-content-type-options"] == "nosniff"
    document = answer.json()
    committed = ROOT / "gen" / "openapi" / "aigne_hub.openapi.json"
    assert document == json.loads(committed.read_text())
    assert document["openapi"].startswith("3.")
    generate = document["paths"]["/api/images/generations"]["post"]
    assert generate["x-grpc-method"] == "aigne.hub.v1.ImageService/Generate"
    body = generate["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/GenerateRequest"}
    schemas = document["components"]["schemas"]
    assert schemas["GenerateRequest"]["required"] == ["prompt"]
    assert {"prompt", "model", "n", "size", "response_format"} <= set(
        schemas["GenerateRequest"]["properties"])
    # The image answer is encoded by the server: `created` is a number; answers Envoy prints
    # carry 64-bit integers as strings.
    assert schemas["GenerateResponse"]["properties"]["created"]["type"] == "integer"
    assert schemas["UsageTotal"]["properties"]["images"]["type"] == "string"
    assert set(document["paths"]) >= {
        "/api/models", "/api/images/files/{name}", "/api/admin/keys",
        "/api/admin/keys/{key_id}", "/api/admin/keys/{key_id}/limits",
        "/api/admin/keys/{key_id}:revoke", "/api/usage", "/api/usage/records"}
    assert document["paths"]["/api/images/files/{name}"]["get"]["security"] == []
    assert "security" not in document["paths"]["/api/models"]["get"]  # needs a key
    assert not any(path.startswith("/console") for path in document["paths"])


# ---- in the browser ----------------------------------------------------------------------

def test_playground_generates_two_images(console: ConsolePage) -> None:
    page = console.open("playground", key=TEST_KEY)
    assert TEST_KEY not in page.url
    assert page.evaluate("sessionStorage.length") == 1
    assert page.evaluate("localStorage.length") == 0
    page.select_option("#model", "local")
    page.select_option("#size", "256x256")
    page.fill("#n", "2")
    page.fill("#prompt", "a lighthouse at dawn, watercolor")
    expect(page.locator("#code-curl")).to_contain_text('"n": 2')
    assert TEST_KEY not in page.locator("#code-curl").inner_text()
    console.screenshot("playground-form")
    page.click("#generate")

    images = page.locator("#images figure.tile img")
    expect(images).to_have_count(2, timeout=60_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#images img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length === 2", timeout=60_000)
    widths = images.evaluate_all("els => els.map(i => [i.naturalWidth, i.naturalHeight])")
    assert widths == [[256, 256], [256, 256]]
    expect(page.locator("#images .size").first).to_have_text("256 × 256")
    expect(page.locator(".result-head")).to_contain_text("served by local")
    assert page.locator("#images button", has_text="Copy URL").count() == 2
    with page.expect_download() as download:
        page.locator("#images button", has_text="Download").first.click()
    assert download.value.suggested_filename == "local-1.png"

    for tab, text in (("python", "client.images.generate("), ("grpcurl",
                                                              "aigne.hub.v1.ImageService/Generate")):
        page.click(f'[role="tab"][data-lang="{tab}"]')
        expect(page.locator(f"#code-{tab}")).to_contain_text(text)
    console.screenshot("playground")
    console.assert_clean()


def test_playground_offers_only_what_the_model_accepts(console: ConsolePage) -> None:
    page = console.open("playground", key=TEST_KEY)
    page.select_option("#model", "dall-e-3")
    sizes = page.locator("#size option").evaluate_all("os => os.map(o => o.value)")
    assert sizes == ["1024x1024", "1792x1024", "1024x1792"]
    qualities = page.locator("#quality option").evaluate_all("os => os.map(o => o.value)")
    assert qualities == ["standard", "hd"]
    assert page.locator("#style option").evaluate_all("os => os.map(o => o.value)") == [
        "vivid", "natural"]
    assert page.locator("#background").count() == 0
    assert page.locator("#output_format").is_disabled()
    page.select_option("#model", "local")
    assert page.locator("#style").count() == 0
    assert "custom" in page.locator("#size option").evaluate_all("os => os.map(o => o.value)")
    page.select_option("#size", "custom")
    expect(page.locator("#size-w")).to_be_visible()
    console.screenshot("playground-capabilities")
    console.assert_clean()


def test_empty_prompt_shows_the_error_naming_prompt(console: ConsolePage) -> None:
    page = console.open("playground", key=TEST_KEY)
    page.select_option("#model", "local")
    page.fill("#prompt", "   ")
    page.click("#generate")
    error = page.locator(".error-box[role=alert]")
    expect(error).to_be_visible(timeout=30_000)
    expect(error.locator(".error-param")).to_have_text("Field: prompt")
    expect(error.locator(".error-title")).to_contain_text("HTTP 400")
    assert "prompt" in error.locator(".error-message").inner_text().lower()
    assert page.locator("#prompt").get_attribute("aria-invalid") == "true"
    console.screenshot("empty-prompt")
    console.assert_clean("400 POST /api/images/generations")


def test_a_prompt_with_markup_renders_as_text(console: ConsolePage) -> None:
    page = console.open("playground", key=TEST_KEY)
    page.select_option("#model", "local")
    page.select_option("#size", "256x256")
    page.fill("#prompt", XSS_PROMPT)
    page.press("#prompt", "Control+Enter")  # the keyboard way
    page.wait_for_function(
        "() => [...document.querySelectorAll('#images img')].some(i => i.naturalWidth > 0)",
        timeout=60_000)
    expect(page.locator("#prompt-echo")).to_have_text(XSS_PROMPT)
    expect(page.locator("#code-curl")).to_contain_text(XSS_PROMPT)
    assert page.locator('img[src="x"]').count() == 0
    page.wait_for_timeout(300)  # an onerror handler would have fired by now
    console.screenshot("xss-prompt")
    console.assert_clean()  # no dialog, no error


def test_admin_creates_a_key_that_works_then_revokes_it(console: ConsolePage,
                                                        console_hub: Hub) -> None:
    page = console.open("keys", key=ADMIN_KEY)
    expect(page.locator("#keys-table")).to_be_visible()
    page.click("#create-key")
    page.fill("#new-key-name", "browser-made key")
    page.fill("#limit-daily", "20")
    page.check("#allow-local")
    page.click("dialog button[type=submit]")
    secret_box = page.locator("#new-key-secret")
    expect(secret_box).to_be_visible(timeout=30_000)
    secret = secret_box.input_value()
    assert secret.startswith("ahk-")
    console_hub.secrets.append(secret)
    console.screenshot("key-created", full_page=False)
    page.click("dialog button:has-text('Done')")

    row = page.locator("#keys-table tbody tr", has_text="browser-made key")
    expect(row).to_contain_text("20/day")
    expect(row).to_contain_text("models: local")
    key_id = row.get_attribute("data-key-id")

    # The new key works from outside the browser (curl's request, made with httpx)...
    headers = {"Authorization": f"Bearer {secret}"}
    url = f"{console_hub.stack.base_url}{GENERATIONS}"
    made = httpx.post(url, headers=headers, timeout=60,
                      json={"prompt": "a key test", "model": "local", "size": "32x32"})
    assert made.status_code == 200, made.text
    # ...and its limits hold: a model outside its allow-list is refused.
    other = httpx.post(url, headers=headers, timeout=60,
                       json={"prompt": "a key test", "model": "dall-e-2", "size": "256x256"})
    assert other.status_code == 403 and other.json()["error"]["param"] == "model"

    page.click(f'button[data-revoke="{key_id}"]')
    page.click("dialog button[type=submit]")
    expect(row).to_contain_text("revoked", timeout=30_000)
    console.screenshot("keys")

    refused = httpx.post(url, headers=headers, timeout=60,
                         json={"prompt": "a key test", "model": "local", "size": "32x32"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "key_revoked"
    console.assert_clean()


def test_admin_sets_limits_in_the_page(console: ConsolePage, console_hub: Hub) -> None:
    key = console_hub.create_key("limits from the page")
    page = console.open("keys", key=ADMIN_KEY)
    row = page.locator(f'#keys-table tr[data-key-id="{key.id}"]')
    row.get_by_role("button", name="Limits of limits from the page").click()
    page.fill("#limit-monthly", "300")
    page.fill("#limit-rpm", "12")
    page.fill("#limit-expires", "2031-01-02T03:04")
    page.click("dialog button[type=submit]")
    expect(row).to_contain_text("300/month", timeout=30_000)
    limits = console_hub.get_key(key)["limits"]
    assert limits["monthly_image_quota"] == 300
    assert limits["requests_per_minute"] == 12
    assert limits["expire_time"].startswith("2031-01-0")
    console.assert_clean()


def test_admin_pages_refuse_a_key_that_is_not_admin(console: ConsolePage) -> None:
    page = console.open("keys", key=TEST_KEY)
    refusal = page.locator("#admin-refused")
    expect(refusal).to_be_visible(timeout=30_000)
    expect(refusal).to_contain_text("needs an admin key")
    expect(page.locator("#key-role")).to_have_text("standard")
    assert page.locator("#create-key").count() == 0
    console.screenshot("keys-refused")
    console.assert_clean()


def test_usage_shows_the_requests_just_made(console: ConsolePage, console_hub: Hub) -> None:
    key = console_hub.create_key("usage in the page")
    request_ids = []
    for n in (1, 2, 3):
        request_id = f"console-usage-{uuid.uuid4().hex[:12]}"
        answer = httpx.post(f"{console_hub.stack.base_url}{GENERATIONS}",
                            headers={**key.headers, "x-request-id": request_id}, timeout=60,
                            json={"prompt": "usage", "model": "local", "size": "32x32", "n": n})
        assert answer.status_code == 200, answer.text
        request_ids.append(request_id)

    page = console.open("usage", key=ADMIN_KEY)
    page.select_option("#usage-key", key.id)
    chart = page.locator('svg[data-chart="images-per-day"]')
    expect(chart).to_be_visible(timeout=30_000)
    page.wait_for_function(
        "id => [...document.querySelectorAll('#usage-records tr[data-request-id]')]"
        ".some(r => r.dataset.requestId === id)", arg=request_ids[-1], timeout=30_000)

    today = datetime.now(UTC).date()
    api = console_hub.usage(key, start_date=(today - timedelta(days=13)).isoformat(),
                            end_date=today.isoformat())
    assert int(api["total"]["images"]) == 6
    bars = chart.locator("rect.bar").evaluate_all(
        "rs => rs.map(r => [r.dataset.date, r.dataset.model, Number(r.dataset.value)])")
    assert bars == [[today.isoformat(), "local", 6]]
    expect(page.locator('[data-stat="images"] .stat-value')).to_have_text("6")
    expect(page.locator('[data-stat="requests"] .stat-value')).to_have_text(
        str(int(api["total"]["requests"])))
    rows = page.locator("#usage-records tbody tr")
    expect(rows).to_have_count(3)
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.requestId)") == request_ids[::-1]
    newest = rows.first
    expect(newest).to_contain_text("usage in the page")
    expect(newest).to_contain_text("OK")
    expect(newest.locator("td").nth(3)).to_have_text("3")
    console.screenshot("usage")

    page.fill("#usage-status", "DAILY_QUOTA_EXCEEDED")
    page.press("#usage-status", "Enter")
    expect(page.locator("#usage-records .empty-row")).to_have_text("No requests match.",
                                                                    timeout=30_000)
    console.assert_clean()


def test_a_late_answer_for_the_old_filters_never_replaces_the_new_one(
        console: ConsolePage, console_hub: Hub) -> None:
    """The page's first load (every key) is held in the network until the key chosen after
    it has been drawn; released then, its answers must be dropped, not drawn over it."""
    key = console_hub.create_key("usage of one key")
    for who, n in ((key, 2), (console_hub.create_key("another key"), 1)):
        assert console_hub.generate(who, n=n).status_code == 200
    held: list[Route] = []
    page = console.page
    page.route("**/api/usage**", lambda route: held.append(route)
               if parse_qs(urlsplit(route.request.url).query).get("key_id") == ["-"]
               else route.continue_())
    finished: list[str] = []
    page.on("requestfinished", lambda request: finished.append(request.url))

    console.open("usage", key=ADMIN_KEY)
    page.select_option("#usage-key", key.id)
    rows = page.locator("#usage-records tbody tr")
    expect(rows).to_have_count(1, timeout=30_000)
    expect(page.locator('[data-stat="images"] .stat-value')).to_have_text("2")
    assert len(held) == 2  # the totals and the records of every key, still unanswered
    for route in held:
        route.continue_()
    while not all(route.request.url in finished for route in held):
        page.wait_for_timeout(50)
    page.wait_for_timeout(200)  # what a late answer would draw, it would have drawn by now
    expect(rows).to_have_count(1)
    assert rows.first.get_attribute("data-request-id") is not None
    expect(rows.first).to_contain_text("usage of one key")
    expect(page.locator('[data-stat="images"] .stat-value')).to_have_text("2")
    console.assert_clean()


def test_a_plain_key_sees_its_own_usage(console: ConsolePage, console_hub: Hub) -> None:
    key = console_hub.create_key("plain usage")
    assert console_hub.generate(key, n=2).status_code == 200
    page = console.open("usage", key=key.secret)
    expect(page.locator('[data-stat="images"] .stat-value')).to_have_text("2", timeout=30_000)
    assert page.locator("#usage-key").is_disabled()
    rows = page.locator("#usage-records tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(key.id)
    console.assert_clean()


def test_reference_page_renders_the_openapi_document(console: ConsolePage) -> None:
    page = console.open("reference")  # no key needed
    operation = page.locator("#op-GenerateOrStreamHttp-post")  # beside it: `...generations:stream`
    expect(operation).to_be_visible(timeout=30_000)
    expect(operation).to_contain_text("aigne.hub.v1.ImageService/Generate")
    expect(operation.locator("table.props").first).to_contain_text("prompt")
    assert page.locator("article.op").count() >= 10
    expect(page.locator("#schema-GenerateRequest")).to_contain_text("response_format")
    stream = page.locator("#op-StreamGenerateHttp-post")
    expect(stream).to_contain_text("text/event-stream")
    expect(page.locator("#op-StreamGenerateHttp_1-post")).to_contain_text("/api/stream/")
    expect(page.locator("#op-CreateJobHttp-post")).to_contain_text("webhook_url")
    console.screenshot("reference", full_page=False)
    console.assert_clean()


def test_without_a_key_the_console_asks_for_one(console: ConsolePage) -> None:
    page = console.open("playground")
    expect(page.locator(".welcome-card")).to_contain_text("Enter an API key")
    page.fill("#api-key", "ahk-not-a-real-key")
    page.click("#use-key")
    expect(page.locator(".error-box")).to_contain_text("HTTP 401", timeout=30_000)
    expect(page.locator("#key-role")).to_have_text("not accepted")
    console.screenshot("no-key")
    page.click("#forget-key")
    expect(page.locator("#api-key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    console.assert_clean("401 GET /api/models", "401 GET /api/admin/keys")
