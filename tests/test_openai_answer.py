"""The OpenAI answer's JSON parsed around its images: the same result as parsing it whole,
for every shape an answer may take, and the whole parse where the fast one does not apply."""

from __future__ import annotations

import base64

import orjson
import pytest

from service.errors import UpstreamFailed
from service.providers.openai_answer import _decode, _json, _json_around_images

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)


def _plain(item: dict) -> dict:
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in item.items()}


@pytest.mark.parametrize("raw", [
    b'{"created":1,"data":[{"b64_json":"%s"},{"b64_json":"%s","revised_prompt":"a \\"cat\\""}]}'
    % (PNG, PNG),
    b'{ "created" : 1 ,\n "data" : [ { "b64_json" :\t"%s" } ], "usage": {"total_tokens": 3}}'
    % PNG,
])
def test_parsed_around_the_images_as_if_whole(raw: bytes) -> None:
    fast = _json_around_images(raw)
    assert fast is not None
    whole = orjson.loads(raw)
    assert [_plain(item) for item in fast["data"]] == [
        {**item, "b64_json": item["b64_json"].encode()} for item in whole["data"]]
    assert {k: v for k, v in fast.items() if k != "data"} == \
        {k: v for k, v in whole.items() if k != "data"}


@pytest.mark.parametrize("raw", [
    b'{"data":[{"url":"http://127.0.0.1/x.png"}]}',  # no b64_json at all
    b'{"data":[{"b64_json":"ab\\/cd"}]}',  # an escape inside the base64
    b'{"note":"\\"b64_json\\": \\"x\\"","data":[]}',  # the key's text inside a string
    b'{"data":[{"b64_json":"abc"',  # cut short
])
def test_other_shapes_are_parsed_whole(raw: bytes) -> None:
    assert _json_around_images(raw) is None


def test_an_answer_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError):
        _json(b'["b64_json"]')
    with pytest.raises(ValueError):
        _json(b"<html>bad gateway</html>")


def test_base64_that_does_not_decode_is_a_bad_answer() -> None:
    with pytest.raises(UpstreamFailed):
        _decode(memoryview(b"abc"))
