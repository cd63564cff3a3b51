"""Hypothesis strategies for the fuzz tests: request fields as a client might get them right,
nearly right, or wrong in every JSON type, for both doors.

Valid values are drawn often enough that a good share of the generated requests reach the
(fake) providers and come back as images; sizes stay small so a run stays short on a
2-core machine. URLs only name hosts that are refused unfetched or the local image host,
so no example waits on DNS.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.fakes.images import picture
from tests.stack import Stack

# How many examples, relative to the counts in the tests: FUZZ_EXAMPLES (or the older
# AIGNE_HUB_FUZZ_EXAMPLES) if set; else CI (CI=true, as .ci/run and CI services set it) runs
# three times what a local `make test` runs.
SCALE = float(os.environ.get("FUZZ_EXAMPLES") or os.environ.get("AIGNE_HUB_FUZZ_EXAMPLES")
              or (3 if os.environ.get("CI", "").lower() in ("true", "1") else 1))

MODELS = ["local", "gpt-image-2", "dall-e-2", "dall-e-3", "gpt-image-1",
          "gpt-image-test-deprecated", "gemini-3.1-flash-image", "gemini-2.5-flash-image",
          "imagen-4.0-generate-001", "imagen-3.0-generate-002"]
SIZES = ["256x256", "512x512", "1024x1024", "1024x1536", "1536x1024", "64x64", "16x16",
         "auto", "1792x1024", "0x0", "-1x5", "1024X1024", "10000x10000", "x", "1024x"]
SMALL_PNG = base64.b64encode(picture(64, 48)).decode()
# Stands for the test image host's address, which is known only when the tests run.
IMAGE_HOST = "http://image-host.test"
FORBIDDEN_URLS = ["http://127.0.0.1:9/a.png", "http://localhost/a.png", "http://10.0.0.1/x",
                  "http://169.254.169.254/latest", "http://[::1]/a.png", "ftp://x/y.png",
                  "file:///etc/passwd", "http://user:pw@127.0.0.1/x.png", "http://"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6)


def choice(*values: object) -> st.SearchStrategy:
    return st.sampled_from(values)


# URL grammar, every part of it sometimes broken. Hosts are never public and never a name
# that would need DNS: non-public IP literals in their odd spellings (numeric, octal, hex,
# IPv6 embeddings of private IPv4), localhost, and labels no resolver is asked about
# (an empty or over-long label first, a NUL, an ideographic full stop between dots).
HOSTS = ["127.0.0.1", "127.1", "0x7f.0.0.1", "0177.0.0.1", "2130706433", "10.1.2.3",
         "169.254.169.254", "0", "localhost", "[::1]", "[::ffff:127.0.0.1]",
         "[64:ff9b::a9fe:a9fe]", "[2002:a9fe:a9fe::]", "[::169.254.169.254]",
         "[::ffff:0:a9fe:a9fe]", "[fe80::1%25eth0]", "[::1", "::1]", "[]", "[v1.x]",
         "a..b", ".", "..", "a\x00b", "a\u3002\u3002b"]


@st.composite
def url_grammar(draw: st.DrawFn) -> str:
    """An http(s)-looking URL from parts that are each sometimes malformed."""
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "http", "ftp", "http:", ""]))
    userinfo = draw(st.sampled_from(["", "", "user@", "user:pw@", "@", ":@"]))
    label = st.text(alphabet="abz09-_", min_size=1, max_size=63)
    broken = st.sampled_from(["", "a" * 64, "b" * 70])  # idna refuses it, before any DNS
    host = draw(st.one_of(st.sampled_from(HOSTS), st.tuples(broken, st.lists(
        label, max_size=4)).map(lambda parts: ".".join([parts[0], *parts[1]]))))
    port = draw(st.sampled_from(["", "", ":80", ":0", ":65536", ":-1", ":99999999999", ":x",
                                 ":"]))
    path = draw(st.text(max_size=30))
    return f"{scheme}://{userinfo}{host}{port}/{path}"


def deeply_nested(field: str) -> st.SearchStrategy[bytes]:
    """A body whose `field` (a known one) holds a list or object nested up to past the JSON
    decoder's 1,024 levels (orjson encodes only 254: found by issue 18's adversarial pass)."""
    return st.tuples(st.integers(1, 1100), st.sampled_from(["[", '{"a":'])).map(
        lambda d: (f'{{"prompt": "x", "{field}": ' + d[1] * d[0]
                   + ("]" if d[1] == "[" else "}") * d[0] + "}").encode())


def image_inputs() -> st.SearchStrategy:
    one = st.one_of(
        st.just(SMALL_PNG), st.just(f"data:image/png;base64,{SMALL_PNG}"),
        st.just(f"{IMAGE_HOST}/40x30.png"), st.just(f"{IMAGE_HOST}/missing.png"),
        st.sampled_from(FORBIDDEN_URLS), url_grammar(), st.text(max_size=30),
        st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
        st.just("data:image/png;base64,!!!"), st.just(SMALL_PNG[: len(SMALL_PNG) // 2]))
    return st.one_of(one, st.lists(one, max_size=3))


def request_fields() -> dict[str, st.SearchStrategy]:
    """Each GenerateRequest field: right values, near misses, and any JSON at all."""
    return {
        "prompt": st.one_of(st.text(min_size=1, max_size=60), choice("", "   ", "x" * 1001),
                            json_values),
        "model": st.one_of(st.sampled_from(MODELS), st.text(max_size=16), json_values),
        "n": st.one_of(st.integers(-3, 12), choice("2", "two", 1.0, 1.5, None, True, 2**40),
                       json_values),
        "size": st.one_of(st.sampled_from(SIZES), st.text(max_size=12), json_values),
        "response_format": st.one_of(choice("url", "b64_json", "", "URL", "xml"), json_values),
        "quality": st.one_of(choice("standard", "hd", "low", "medium", "high", "auto", "ultra"),
                             json_values),
        "style": st.one_of(choice("vivid", "natural", "dreamy", ""), json_values),
        "output_format": st.one_of(choice("png", "jpeg", "webp", "bmp"), json_values),
        "output_compression": st.one_of(st.integers(-10, 120), json_values),
        "background": st.one_of(choice("auto", "opaque", "transparent", "purple"), json_values),
        "moderation": st.one_of(choice("auto", "low", "none"), json_values),
        "user": st.one_of(st.text(max_size=40), choice("u" * 300), json_values),
        "image": st.one_of(image_inputs(), json_values),
    }


def json_bodies() -> st.SearchStrategy:
    """A JSON object with any subset of the fields, sometimes under their lowerCamel
    names, plus unknown fields."""
    fields = request_fields()
    camel = {"responseFormat": fields["response_format"],
             "outputFormat": fields["output_format"],
             "outputCompression": fields["output_compression"]}
    known = st.fixed_dictionaries({}, optional={**fields, **camel})
    extra = st.dictionaries(st.text(max_size=10), json_values, max_size=2)
    return st.builds(lambda a, b: {**b, **a}, known, extra)


# Requests that should succeed, by model: sizes it makes (small ones, for a short run) and
# whether it edits.
VALID = {"local": (["16x16", "64x64", "256x256", "320x200"], True),
         "gpt-image-2": (["1024x1024", "auto", "1536x1024"], True),
         "dall-e-2": (["256x256", "512x512"], False),
         "dall-e-3": (["1024x1024", "1792x1024"], False),
         "gemini-3.1-flash-image": (["1024x1024", "512x512", "1600x900"], True),
         "imagen-4.0-generate-001": (["1024x1024"], False)}


@st.composite
def valid_requests(draw: st.DrawFn) -> dict:
    """A request its model can serve: the fakes answer it with images."""
    model = draw(st.sampled_from(sorted(VALID)))
    sizes, edits = VALID[model]
    body = {"prompt": draw(st.text(min_size=1, max_size=40).filter(str.strip)),
            "model": model, "size": draw(st.sampled_from(sizes)), "n": draw(st.integers(1, 3)),
            "response_format": draw(choice("url", "b64_json"))}
    if edits and draw(st.booleans()):
        body["image"] = draw(st.sampled_from([SMALL_PNG, f"data:image/png;base64,{SMALL_PNG}",
                                              f"{IMAGE_HOST}/40x30.png"]))
    return body


@st.composite
def near_misses(draw: st.DrawFn) -> dict:
    """A valid request with one or two fields changed to anything at all."""
    body = draw(valid_requests())
    fields = request_fields()
    for name in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=2)):
        body[name] = draw(fields[name])
    return body


def raw_bodies() -> st.SearchStrategy[bytes]:
    """What arrives as the HTTP body: valid requests, near misses, any JSON object with
    the request's fields, and now and then anything at all."""
    return st.one_of(
        st.one_of(valid_requests(), near_misses(), json_bodies()).map(
            lambda body: json.dumps(body).encode()),
        json_values.map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=64),
        st.text(max_size=64).map(str.encode),
        st.sampled_from(sorted(request_fields())).flatmap(deeply_nested),
        st.just(b'{"prompt": "x", "n": '), st.just(b""),
    )


def proto_fields() -> st.SearchStrategy[dict]:
    """GenerateRequest fields as the gRPC door takes them (typed, any value in range):
    valid requests, near misses, and any values."""
    int32 = st.integers(-(2**31), 2**31 - 1)
    text = st.text(max_size=40)
    images = image_inputs().map(lambda v: v if isinstance(v, list) else [v])
    fields = {
        "prompt": st.one_of(st.text(min_size=1, max_size=60), text),
        "model": st.one_of(st.sampled_from(MODELS), text),
        "n": st.one_of(st.integers(-3, 12), int32),
        "size": st.one_of(st.sampled_from(SIZES), text),
        "response_format": st.one_of(choice("url", "b64_json", "gif"), text),
        "quality": st.one_of(choice("standard", "hd", "low", "auto", "ultra"), text),
        "style": st.one_of(choice("vivid", "natural"), text),
        "output_format": st.one_of(choice("png", "jpeg", "webp", "bmp"), text),
        "output_compression": st.one_of(st.integers(-10, 120), int32),
        "background": st.one_of(choice("auto", "opaque", "transparent"), text),
        "moderation": st.one_of(choice("auto", "low"), text),
        "user": text,
        "image": images,
    }

    @st.composite
    def near_miss(draw: st.DrawFn) -> dict:
        body = draw(valid_requests())
        for name in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=2)):
            body[name] = draw(fields[name])
        return body

    typed = valid_requests().map(
        lambda body: {**body, "image": [body["image"]] if "image" in body else []})
    return st.one_of(typed, near_miss().map(
        lambda body: {**body, "image": body["image"] if isinstance(body.get("image"), list)
                      else [body["image"]] if "image" in body else []}),
                     st.fixed_dictionaries({}, optional=fields))


def on_image_host(value: bytes, image_host_url: str) -> bytes:
    """`value` with the image host's real address in place of IMAGE_HOST."""
    return value.replace(IMAGE_HOST.encode(), image_host_url.encode())


def examples(count: int) -> settings:
    return settings(max_examples=max(1, int(count * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def server_stays_up(provider_stack: Stack) -> Iterator[None]:
    """After all the fuzzing: the stack answers, and nothing was an unexpected error."""
    before = len(provider_stack.log_lines())
    yield
    assert provider_stack.process is not None and provider_stack.process.poll() is None
    assert httpx.get(f"{provider_stack.base_url}/readyz").status_code == 200
    lines = provider_stack.log_lines()[before:]
    assert not [line for line in lines if line.get("event") == "unexpected error"]
    assert not [line for line in lines if line.get("status") == "INTERNAL"]
