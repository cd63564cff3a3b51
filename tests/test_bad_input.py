"""Bad requests on purpose: each gets its 4xx (or documented 5xx) with the OpenAI-shaped JSON
body naming the field, through Envoy, never a crash, a plain-text body or a stack trace."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import jsonschema
import pytest

from aigne.hub.v1 import image_service_pb2 as pb
from tests.conftest import GRPC_AUTH
from tests.openai_schema import ERROR_RESPONSE
from tests.stack import SIGNING_SECRET, TEST_KEY, Stack

GENERATIONS = "/api/images/generations"


def assert_error(answer: httpx.Response, status: int, param: str | None, code: str | None = None
                 ) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    jsonschema.validate(body, ERROR_RESPONSE)
    assert body["error"]["param"] == param, body
    if code is not None:
        assert body["error"]["code"] == code, body
    assert "Traceback" not in answer.text and "grpc" not in answer.text.lower()
    return body["error"]


@pytest.mark.parametrize(("body", "param", "code"), [
    ({}, "prompt", "missing_required_parameter"),
    ({"prompt": ""}, "prompt", "missing_required_parameter"),
    ({"prompt": "   \n "}, "prompt", "missing_required_parameter"),
    ({"prompt": "x", "n": 0}, "n", "integer_below_min_value"),
    ({"prompt": "x", "n": 11}, "n", "integer_above_max_value"),
    ({"prompt": "x", "n": -3}, "n", "integer_below_min_value"),
    ({"prompt": "x", "n": "two"}, "n", "invalid_type"),
    ({"prompt": "x", "n": 1.5}, "n", "invalid_type"),
    ({"prompt": ["a", "b"]}, "prompt", "invalid_type"),
    ({"prompt": "x", "image": 5}, "image", "invalid_type"),
    ({"prompt": "x", "model": "dall-e-2", "size": "1792x1024"}, "size", "unsupported_size"),
    ({"prompt": "x", "model": "dall-e-3", "size": "256x256"}, "size", "unsupported_size"),
    ({"prompt": "x", "size": "big"}, "size", "invalid_value"),
    ({"prompt": "x", "size": "0x100"}, "size", "unsupported_size"),
    ({"prompt": "x", "size": "99999x99999"}, "size", "unsupported_size"),
    ({"prompt": "x", "size": "1234567x1"}, "size", "invalid_value"),
    ({"prompt": "x", "model": "gemini-2.5-flash-image", "size": "99999x99999"}, "size",
     "unsupported_size"),
    ({"prompt": "x", "model": "dall-e-2", "quality": "hd"}, "quality", "unsupported_value"),
    ({"prompt": "x", "quality": "ultra"}, "quality", "unsupported_value"),
    ({"prompt": "x", "style": "vivid"}, "style", "unsupported_value"),
    ({"prompt": "x", "model": "dall-e-2", "style": "natural"}, "style", "unsupported_value"),
    ({"prompt": "x", "model": "dall-e-3", "style": "dreamy"}, "style", "unsupported_value"),
    ({"prompt": "x", "response_format": "gif"}, "response_format", "invalid_value"),
    ({"prompt": "x", "output_format": "bmp"}, "output_format", "invalid_value"),
    ({"prompt": "x", "model": "dall-e-2", "output_format": "jpeg"}, "output_format",
     "unsupported_value"),
    ({"prompt": "x", "output_compression": 50}, "output_compression", "unsupported_value"),
    ({"prompt": "x", "output_format": "jpeg", "output_compression": 101}, "output_compression",
     "invalid_value"),
    ({"prompt": "x", "background": "purple"}, "background", "invalid_value"),
    ({"prompt": "x", "background": "transparent", "output_format": "jpeg"}, "background",
     "unsupported_value"),
    ({"prompt": "x", "model": "dall-e-2", "background": "opaque"}, "background",
     "unsupported_value"),
    ({"prompt": "x", "moderation": "low"}, "moderation", "unsupported_value"),
    ({"prompt": "x" * 1001, "model": "dall-e-2"}, "prompt", "string_above_max_length"),
    ({"prompt": "x", "model": "dall-e-3", "image": "aGVsbG8="}, "image", "unsupported_value"),
    ({"prompt": "x", "image": "not base64 !!"}, "image", "invalid_image"),
    ({"prompt": "x", "image": base64.b64encode(b"plain text").decode()}, "image",
     "invalid_image"),
    ({"prompt": "x", "image": [""]}, "image", "invalid_value"),
    ({"prompt": "x", "user": "u" * 300}, "user", "string_above_max_length"),
])
def test_bad_field_is_400_naming_it(http: httpx.Client, body: dict, param: str, code: str) -> None:
    assert_error(http.post(GENERATIONS, json=body), 400, param, code)


@pytest.mark.parametrize("raw", [b"{bad json", b"", b"[1, 2]", b"\"prompt\"", b"\xff\xfe"])
def test_body_that_is_not_a_json_object_is_400(http: httpx.Client, raw: bytes) -> None:
    error = assert_error(http.post(GENERATIONS, content=raw,
                                   headers={"content-type": "application/json"}), 400, None,
                         "invalid_json")
    assert "JSON" in error["message"]


def test_unknown_fields_are_ignored(http: httpx.Client) -> None:
    answer = http.post(GENERATIONS, json={"prompt": "x", "size": "64x64", "colour": "blue"})
    assert answer.status_code == 200, answer.text


def test_lenient_json_forms_are_accepted(http: httpx.Client) -> None:
    answer = http.post(GENERATIONS, json={"prompt": "x", "size": "64x64", "n": "2",
                                          "quality": None, "responseFormat": "b64_json"})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]) == 2 and "b64_json" in answer.json()["data"][0]


def test_unknown_model_is_404(http: httpx.Client) -> None:
    error = assert_error(http.post(GENERATIONS, json={"prompt": "x", "model": "dall-e-9"}),
                         404, "model", "model_not_found")
    assert "dall-e-9" in error["message"]


def test_model_without_configured_provider_is_503_naming_what_to_set(http: httpx.Client) -> None:
    error = assert_error(http.post(GENERATIONS, json={"prompt": "x", "model": "dall-e-3"}),
                         503, "model", "provider_not_configured")
    assert "OPENAI_API_KEY" in error["message"]


def test_missing_key_is_401(stack: Stack) -> None:
    answer = httpx.post(f"{stack.base_url}{GENERATIONS}", json={"prompt": "x"})
    assert_error(answer, 401, None, "missing_api_key")


@pytest.mark.parametrize("authorization", ["Bearer wrong-key", "Basic abc", "Bearer", TEST_KEY])
def test_wrong_key_is_401(stack: Stack, authorization: str) -> None:
    answer = httpx.post(f"{stack.base_url}{GENERATIONS}", json={"prompt": "x"},
                        headers={"Authorization": authorization})
    error = assert_error(answer, 401, None)
    assert TEST_KEY not in error["message"] and "wrong-key" not in error["message"]


def test_revoked_key_is_refused_at_once(stack: Stack) -> None:
    created = stack.cli("keys", "create", "revocation test").stdout
    token = created.split("shown once, keep it safe): ", 1)[1].strip()
    headers = {"Authorization": f"Bearer {token}"}
    body = {"prompt": "x", "size": "32x32"}
    assert httpx.post(f"{stack.base_url}{GENERATIONS}", json=body, headers=headers,
                      timeout=60).status_code == 200

    stack.cli("keys", "revoke", token[:12])

    answer = httpx.post(f"{stack.base_url}{GENERATIONS}", json=body, headers=headers)
    assert_error(answer, 403, None, "key_revoked")
    listing = stack.cli("keys", "list").stdout
    assert "revoked" in listing and token not in listing


def test_revoked_key_is_refused_over_grpc(stack: Stack, stub) -> None:
    token = stack.cli("keys", "create", "grpc revocation").stdout.split("safe): ", 1)[1].strip()
    stack.cli("keys", "revoke", token[:12])
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(pb.GenerateRequest(prompt="x"),
                      metadata=(("authorization", f"Bearer {token}"),), timeout=30)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_grpc_missing_key_is_unauthenticated(stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(pb.GenerateRequest(prompt="x"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(("request_fields", "code"), [
    ({"prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"prompt": "x", "model": "nope"}, grpc.StatusCode.NOT_FOUND),
    ({"prompt": "x", "model": "dall-e-3"}, grpc.StatusCode.FAILED_PRECONDITION),
    ({"prompt": "x", "size": "1x1x1"}, grpc.StatusCode.INVALID_ARGUMENT),
])
def test_grpc_bad_requests(stub, request_fields: dict, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Generate(pb.GenerateRequest(**request_fields), metadata=GRPC_AUTH, timeout=30)
    assert caught.value.code() == code


def _url(http: httpx.Client) -> str:
    answer = http.post(GENERATIONS, json={"prompt": "a url to tamper with", "size": "32x32"})
    return answer.json()["data"][0]["url"]


def _signed(name: str, expires: int) -> str:
    mac = hmac.new(SIGNING_SECRET.encode(), f"{name}\n{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def test_tampered_url_is_refused(http: httpx.Client, stack: Stack) -> None:
    url = _url(http)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    name = parts.path.rsplit("/", 1)[1]
    expires, signature = int(query["expires"][0]), query["signature"][0]
    base = f"{stack.base_url}/api/images/files"

    later = httpx.get(f"{base}/{name}?expires={expires + 3600}&signature={signature}")
    assert_error(later, 403, "signature", "invalid_signature")
    swapped = "X" if name[-5] != "X" else "Y"  # another name (the same 1 time in 64 before)
    other = httpx.get(f"{base}/{name[:-5]}{swapped}.png?expires={expires}&signature={signature}")
    assert_error(other, 403, "signature", "invalid_signature")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    assert_error(httpx.get(f"{base}/{name}?expires={expires}&signature={flipped}"), 403,
                 "signature", "invalid_signature")
    assert_error(httpx.get(f"{base}/{name}"), 403, "signature", "invalid_signature")
    assert httpx.get(url).status_code == 200


def test_expired_url_is_refused(http: httpx.Client, stack: Stack) -> None:
    name = urlsplit(_url(http)).path.rsplit("/", 1)[1]
    expired = int(time.time()) - 1
    answer = httpx.get(f"{stack.base_url}/api/images/files/{name}?expires={expired}"
                       f"&signature={_signed(name, expired)}")
    assert_error(answer, 403, "expires", "url_expired")


def test_signed_url_of_missing_image_is_404(stack: Stack) -> None:
    name = "img_" + "A" * 24 + ".png"
    expires = int(time.time()) + 60
    answer = httpx.get(f"{stack.base_url}/api/images/files/{name}?expires={expires}"
                       f"&signature={_signed(name, expires)}")
    assert_error(answer, 404, "name", "image_not_found")


def test_bad_query_value_is_json_400(stack: Stack) -> None:
    answer = httpx.get(f"{stack.base_url}/api/images/files/x.png?expires=soon")
    assert_error(answer, 400, None, "invalid_request")


@pytest.mark.parametrize(("method", "path"), [("GET", "/"), ("GET", "/api/nothing"),
                                              ("POST", "/api/images/no-such-door"),
                                              ("DELETE", GENERATIONS)])
def test_unknown_path_is_json_404(stack: Stack, method: str, path: str) -> None:
    answer = httpx.request(method, f"{stack.base_url}{path}")
    assert_error(answer, 404, None, "not_found")


def test_body_over_the_limit_is_json_413(stack: Stack) -> None:
    huge = b'{"prompt": "' + b"x" * (65 << 20) + b'"}'
    answer = httpx.post(f"{stack.base_url}{GENERATIONS}", content=huge, timeout=120,
                        headers={"Authorization": f"Bearer {TEST_KEY}",
                                 "content-type": "application/json"})
    assert_error(answer, 413, None, "request_too_large")
