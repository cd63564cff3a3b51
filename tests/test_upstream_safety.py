"""What an upstream says cannot hurt us: an answer that carries a `url` goes through the
source images' guard and limits (the allowlisted image host passes, loopback elsewhere is
refused unfetched), and a credential an upstream quotes back is masked on both doors and
never reaches the server's log."""

from __future__ import annotations

import base64
import string
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from aigne.hub.v1 import image_service_pb2 as pb
from service.errors import KnownSecrets
from service.ops import logs
from tests.conftest import GRPC_AUTH, ImageHost, http_client, provider_env, stub_of
from tests.fakes.google_fake import FakeGoogle, google_error
from tests.fakes.images import picture
from tests.fakes.openai_fake import FakeOpenAI, error
from tests.fakes.server import Reply
from tests.stack import Stack
from tests.test_bad_input import assert_error

GENERATIONS = "/api/images/generations"
HEX_KEY = "3f9a1c0b7e2d4a6f8b1c3e5d7f9a0b2c4d6e8f1a"  # no prefix a pattern would know
GSK_KEY = "gsk_Zq81LmW0pXc4Rt7Yb2Nv6Hd9Ks3Jf5Ga"


def url_answer(url: str) -> Reply:
    return Reply(200, {"created": 1, "data": [{"url": url}]})


def test_url_answer_on_the_allowed_image_host_is_fetched(provider_rest: httpx.Client,
                                                         fakes) -> None:
    fake_openai, _, host = fakes
    fake_openai.script("generations", url_answer(f"{host.url}/64x64.png"))
    answer = provider_rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "x",
                                                   "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text
    assert [r.route for r in host.received] == ["64x64.png"]


@pytest.mark.parametrize("where", ["loopback", "redirect"])
def test_url_answer_pointing_at_loopback_is_refused_unfetched(provider_rest: httpx.Client,
                                                              fakes, where: str) -> None:
    fake_openai, _, host = fakes
    # The fake OpenAI itself: on 127.0.0.1, but not on the image host allowlist.
    forbidden = f"{fake_openai.url}/v1/images/generations"
    if where == "redirect":  # an allowed host that sends us on to it
        host.script("bounce.png", Reply(302, raw=b"", headers={"location": forbidden}))
    fake_openai.script("generations", url_answer(
        forbidden if where == "loopback" else f"{host.url}/bounce.png"))
    error_body = assert_error(provider_rest.post(GENERATIONS, json={
        "model": "gpt-image-2", "prompt": "x"}), 502, None, "upstream_image_url_forbidden")
    assert "did not fetch" in error_body["message"]
    assert str(fake_openai.port) not in error_body["message"], "the URL is not repeated"
    assert [r.method for r in fake_openai.received] == ["POST"]  # the generation alone


def test_an_upstream_answer_larger_than_the_limit_is_refused_unread(
        tmp_path, fake_openai: FakeOpenAI, fake_google: FakeGoogle,
        image_host: ImageHost) -> None:
    """An upstream cannot make the server hold more than AIGNE_HUB_MAX_RESPONSE_BYTES of its
    answer (the body of known length is read into a buffer of that length: a hostile
    Content-Length must not size it); a smaller answer still passes."""
    large = base64.b64encode(picture(1024, 1024, noise=True)).decode()  # ~4 MB of JSON
    fake_openai.script("generations", Reply(200, {"created": 1, "data": [{"b64_json": large}]}))
    env = {**provider_env(fake_openai, fake_google, image_host),
           "AIGNE_HUB_MAX_RESPONSE_BYTES": str(2 << 20)}
    with Stack(tmp_path, env) as running, http_client(running) as rest:
        refused = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "big",
                                               "response_format": "b64_json"})
        body = assert_error(refused, 502, None, "upstream_answer_too_large")
        assert "2 MB" in body["message"]
        small = rest.post(GENERATIONS, json={"model": "gpt-image-2", "prompt": "small",
                                             "response_format": "b64_json"})
        assert small.status_code == 200, small.text

        fake_google.script("generateContent", Reply(200, {"candidates": [{"content": {
            "role": "model", "parts": [{"inlineData": {"mimeType": "image/png", "data": large}}]},
            "finishReason": "STOP"}]}))
        refused = rest.post(GENERATIONS, json={"model": "gemini-3.1-flash-image",
                                               "prompt": "big"})
        assert_error(refused, 502, None, "upstream_answer_too_large")
        small = rest.post(GENERATIONS, json={"model": "gemini-3.1-flash-image", "prompt": "small"})
        assert small.status_code == 200, small.text


@pytest.fixture(scope="module")
def echo_stack(tmp_path_factory: pytest.TempPathFactory, image_host: ImageHost
               ) -> Iterator[tuple[Stack, FakeOpenAI, FakeGoogle]]:
    """Upstreams whose keys no pattern knows: a hex key (OpenAI) and a `gsk_` key (Google)."""
    openai_fake, google_fake = FakeOpenAI(api_key=HEX_KEY).start(), FakeGoogle().start()
    google_fake.api_key = GSK_KEY
    try:
        with Stack(tmp_path_factory.mktemp("echo"),
                   provider_env(openai_fake, google_fake, image_host)) as running:
            yield running, openai_fake, google_fake
    finally:
        openai_fake.stop()
        google_fake.stop()


def quoting_the_key(fake: FakeOpenAI | FakeGoogle, quoted: str) -> None:
    """The next two calls fail with an error that quotes the key they were sent: `quoted`,
    the key itself or part of it."""
    if isinstance(fake, FakeOpenAI):
        reply = error(400, f"Incorrect API key provided: {quoted}. Invalid 'quality'.",
                      param="quality", code="invalid_value")
        fake.script("generations", reply, reply)
    else:
        reply = google_error(400, "INVALID_ARGUMENT", f"Request with key {quoted} is invalid.")
        fake.script("generateContent", reply, reply)


# How upstreams quote a key: whole, or in part (OpenAI's own 401 shows the scheme, a run of
# `*` and the last four characters; others show a start and an ellipsis). Each with the
# pieces that must not come back.
QUOTES = {
    "whole": lambda key: (key, [key]),
    "stars and its end": lambda key: (key[:8] + "*" * 28 + key[-4:], [key[:8], key[-4:]]),
    "its start and dots": lambda key: (key[:14] + "...", [key[:14]]),
}


@pytest.mark.parametrize("quote", QUOTES)
@pytest.mark.parametrize(("model", "key"), [("gpt-image-2", HEX_KEY),
                                            ("gemini-3.1-flash-image", GSK_KEY)])
def test_a_quoted_credential_is_masked_on_both_doors_and_in_the_log(echo_stack, model: str,
                                                                   key: str, quote: str) -> None:
    stack, openai_fake, google_fake = echo_stack
    quoted, pieces = QUOTES[quote](key)
    quoting_the_key(openai_fake if model.startswith("gpt") else google_fake, quoted)
    before = len(stack.log_lines())
    with http_client(stack) as rest:
        body = assert_error(rest.post(GENERATIONS, json={"model": model, "prompt": "x"}), 400,
                            "quality" if model.startswith("gpt") else None,
                            "upstream_invalid_request")
    assert not [p for p in pieces if p in body["message"]], body
    assert "***" in body["message"], body
    for stub in stub_of(stack, "server"):
        with pytest.raises(grpc.RpcError) as failed:
            stub.Generate(pb.GenerateRequest(model=model, prompt="x"), metadata=GRPC_AUTH,
                          timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = failed.value.details() or ""
    assert not [p for p in pieces if p in details] and "***" in details, details
    assert not [p for p in pieces if p in str(failed.value.trailing_metadata())]
    logged = "\n".join(str(line) for line in stack.log_lines()[before:])
    assert logged and not [p for p in pieces if p in logged]


def test_the_log_masks_every_known_credential(capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever carries a credential into a log line (an upstream's words, a traceback), the
    line leaves with it masked."""
    secrets = KnownSecrets([HEX_KEY])
    logs.configure("INFO", secrets)
    try:
        secrets.update([GSK_KEY, "short"])  # learnt later, as the router reads deployments
        structlog.get_logger("test").warning("upstream said", message=f"bad key {HEX_KEY}",
                                             other=f"and {GSK_KEY}; short stays")
        line = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
    assert HEX_KEY not in line and GSK_KEY not in line, line
    assert "bad key ***" in line and "and ***; short stays" in line


# Partial echoes, offline: any credential, quoted in part in any of the ways upstreams do,
# is masked; the same text with less of the key in it (a scheme, three characters) is not.
SCHEMES = st.sampled_from(["", "sk-", "sk-proj-", "gsk_", "AIza", "sk-ant-api03-", "ahk-"])
KEY_BODY = st.text(alphabet=string.ascii_letters + string.digits, min_size=20, max_size=80)
ELISIONS = st.sampled_from(["...", "…", "***", "*" * 28, "....", "**…"])
BEFORE = st.sampled_from(["", "Incorrect API key provided: ", "key ", "(", "'", "bad key="])
AFTER = st.sampled_from(["", ". You can find your API key at https://example.com.", " is invalid",
                         ")", "'", ", try again"])


@given(scheme=SCHEMES, body=KEY_BODY, elision=ELISIONS, before=BEFORE, after=AFTER,
       cut=st.floats(0, 1), form=st.sampled_from(["start", "end", "start and end"]))
def test_partial_echoes_of_a_credential_are_masked(scheme: str, body: str, elision: str,
                                                   before: str, after: str, cut: float,
                                                   form: str) -> None:
    key = scheme + body
    secrets = KnownSecrets([key, HEX_KEY, GSK_KEY])
    shortest = max(KnownSecrets.MIN_LENGTH, len(scheme) + KnownSecrets.PREFIX_SHOWN)
    if form == "start":  # at least the key's scheme and six characters more
        head, tail = key[:shortest + int(cut * (len(key) - 1 - shortest))], ""
    else:  # its last four characters or more, after anything of its start, or nothing
        head = key[:int(cut * len(scheme + body[:4]))] if form == "start and end" else ""
        tail = key[-(4 + int(cut * 8)):]
    text = before + head + elision + tail + after
    masked = secrets.mask(text)
    # With nothing after it, an elision runs on into a sentence's full stop.
    assert masked in (before + "***" + after,
                      before + "***" + (after.removeprefix(".") if not tail else after)), masked


@given(scheme=SCHEMES, body=KEY_BODY, elision=ELISIONS, before=BEFORE, after=AFTER,
       shown=st.integers(0, 5), tail=st.integers(1, 3))
def test_too_little_of_a_credential_is_not_masked(scheme: str, body: str, elision: str,
                                                  before: str, after: str, shown: int,
                                                  tail: int) -> None:
    """A scheme with fewer than six characters after it, or fewer than four last characters,
    say nothing of the key: such text stays as it is."""
    key = scheme + body
    secrets = KnownSecrets([key])
    for text in (before + key[:len(scheme) + shown] + elision + after,
                 before + elision + key[-tail:] + after):
        assert secrets.mask(text) == text


@given(key=st.text(alphabet="0123456789abcdef", min_size=32, max_size=64),
       words=st.lists(st.one_of(st.text(alphabet=string.ascii_uppercase + "gxz-_ :,()'",
                                         max_size=12), ELISIONS), max_size=12))
def test_text_that_quotes_no_credential_is_left_alone(key: str, words: list[str]) -> None:
    """Elisions, words and punctuation around them, none of it from the key: unchanged."""
    text = "".join(words)
    assert KnownSecrets([key]).mask(text) == text


def test_masking_partial_echoes_stays_quick_on_long_words() -> None:
    """Every log line is masked: a long word beside an elision once took 15 s (20,000
    characters, the elision looked for from every character); linear now."""
    secrets = KnownSecrets([HEX_KEY, GSK_KEY])
    started = time.monotonic()
    for text in ("x" * 200_000 + " wait...", "ab.." * 50_000, "**" + "a**" * 50_000):
        assert secrets.mask(text) == text
    assert time.monotonic() - started < 1
