"""Usage records and reports, on SQLite and on PostgreSQL: what one request leaves behind,
what it costs, and the totals `GET /api/usage`, its gRPC method and the CLI give."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import httpx
import pytest

from aigne.hub.v1 import usage_service_pb2 as usage_pb
from aigne.hub.v1 import usage_service_pb2_grpc as usage_grpc
from service.catalog.models import load_registry
from service.catalog.pricing import Price, TokenUsage, cost
from tests.hub import Hub
from tests.test_bad_input import assert_error

LOCAL_PRICE = 0.0025  # tests/models.toml
CREDITS_PER_USD = 1000  # the default


def test_a_request_leaves_a_record_with_every_field(hub: Hub) -> None:
    key = hub.create_key("record fields")
    answer = hub.generate(key, n=2, size="48x32", response_format="b64_json", user="alice")
    assert answer.status_code == 200, answer.text
    returned = sum(len(base64.b64decode(item["b64_json"])) for item in answer.json()["data"])

    [record] = hub.records(key)

    assert record["request_id"] == answer.headers["x-request-id"]
    assert record["key_id"] == key.id and record["door"] == "rest" and record["user"] == "alice"
    assert (record["model"], record["served_model"], record["provider"]) == (
        "local", "local", "local")
    assert (record["n"], record["size"], record["quality"], record["response_format"]) == (
        2, "48x32", "standard", "b64_json")
    assert (record["status"], record["http_status"], record["images"]) == ("OK", 200, 2)
    assert int(record["bytes"]) == returned
    assert 0 < record["upstream_latency_ms"] <= record["total_latency_ms"]
    assert record["cost_usd"] == pytest.approx(2 * LOCAL_PRICE)
    assert record["cost_credits"] == pytest.approx(2 * LOCAL_PRICE * CREDITS_PER_USD)
    created = datetime.fromisoformat(record["create_time"].replace("Z", "+00:00"))
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=1)


def test_retired_name_keeps_both_names_and_costs_what_its_successor_costs(hub: Hub) -> None:
    key = hub.create_key("retired name")
    answer = hub.generate(key, model="old-local")
    assert answer.status_code == 200 and answer.headers["x-model-served"] == "local"

    [record] = hub.records(key)

    assert (record["model"], record["served_model"]) == ("old-local", "local")
    assert record["cost_usd"] == pytest.approx(LOCAL_PRICE), "local's price, not old-local's"


def test_failed_requests_are_recorded_and_cost_nothing(hub: Hub) -> None:
    key = hub.create_key("failures")
    assert_error(hub.generate(key, size="big"), 400, "size")
    assert_error(hub.generate(key, model="no-such-model"), 404, "model")

    records = {r["model"]: r for r in hub.records(key)}

    assert records["local"]["status"] == "INVALID_VALUE"
    assert records["local"]["http_status"] == 400 and records["local"]["size"] == "big"
    assert records["no-such-model"]["status"] == "MODEL_NOT_FOUND"
    assert "served_model" not in records["no-such-model"], "never routed"
    for record in records.values():
        assert record["images"] == 0 and record["cost_usd"] == 0


def test_rest_answers_keep_counts_at_zero_and_leave_out_empty_strings(hub: Hub) -> None:
    """Envoy printed every unset string of a typed answer as "" (a total's date and model,
    a record's served model when nothing was routed); the server writes these answers now:
    empty strings are left out, counts and costs stay at 0, 64-bit integers are strings as
    before. gRPC carries the same messages, every field present."""
    key = hub.create_key("empty usage")
    empty = hub.usage(key)
    assert empty["days"] == [] and empty["models"] == []
    assert empty["total"] == {"requests": "0", "failed_requests": "0", "images": "0",
                              "bytes": "0", "cost_usd": 0, "cost_credits": 0}, empty
    assert "next_page_token" not in hub.admin.get(
        "/api/usage/records", params={"key_id": key.id}).json()
    assert_error(hub.generate(key, model="no-such-model"), 404, "model")
    (record,) = hub.records(key)
    assert {"served_model", "provider", "user", "tokens"}.isdisjoint(record), record
    assert (record["images"], record["bytes"], record["cost_usd"]) == (0, "0", 0)
    assert record["upstream_latency_ms"] == 0 and record["attempts"] == []
    with grpc.insecure_channel(hub.stack.envoy_target) as channel:
        typed = usage_grpc.UsageServiceStub(channel).ListUsageRecords(
            usage_pb.ListUsageRecordsRequest(), metadata=key.metadata, timeout=30)
    assert typed.records[0].served_model == "" and typed.records[0].images == 0


def test_overlong_client_values_still_leave_a_record(hub: Hub) -> None:
    """A request id, user or model longer than their columns (PostgreSQL refuses those)."""
    key = hub.create_key("long values")
    request_id = "r" * 300
    answer = httpx.post(f"{hub.stack.base_url}/api/images/generations",
                        headers={**key.headers, "x-request-id": request_id},
                        json={"prompt": "x", "user": "u" * 300, "model": "m" * 300})
    assert answer.status_code in (400, 404)

    [record] = hub.records(key)

    assert len(record["request_id"]) == 32 and record["request_id"] != request_id[:128], \
        "an id too long to be one is replaced by a fresh one, which the record keeps"
    assert record["model"] == "m" * 200 and record["status"] in ("STRING_ABOVE_MAX_LENGTH",
                                                                  "MODEL_NOT_FOUND")


def test_totals_per_day_and_model_match_the_cli(hub: Hub) -> None:
    key = hub.create_key("report")
    for n in (1, 2, 3):
        assert hub.generate(key, n=n).status_code == 200
    assert hub.generate(key, model="old-local").status_code == 200
    assert hub.generate(key, size="big").status_code == 400

    usage = hub.usage(key)

    today = datetime.now(UTC).date().isoformat()
    assert usage["key_id"] == key.id and usage["end_date"] == today
    assert [(d["date"], d["model"]) for d in usage["days"]] == [(today, "local"),
                                                               (today, "old-local")]
    local = usage["models"][0]
    assert (local["model"], local["requests"], local["failed_requests"], local["images"]) == (
        "local", "4", "1", "6")
    assert local["cost_usd"] == pytest.approx(6 * LOCAL_PRICE)
    total = usage["total"]
    assert (total["requests"], total["images"]) == ("5", "7")
    assert total["cost_credits"] == pytest.approx(7 * LOCAL_PRICE * CREDITS_PER_USD)

    printed = hub.stack.cli("usage", "--key", key.id).stdout
    total_line = next(line for line in printed.splitlines() if line.startswith("total"))
    assert total_line.split()[1:] == ["5", "1", "7", total["bytes"],
                                      f"{7 * LOCAL_PRICE:.6f}",
                                      f"{7 * LOCAL_PRICE * CREDITS_PER_USD:.3f}"]
    assert f"{today}  local" in printed and f"{today}  old-local" in printed


def test_usage_over_grpc_says_what_rest_says(hub: Hub) -> None:
    key = hub.create_key("grpc usage")
    assert hub.generate(key, n=3).status_code == 200
    rest = hub.usage(key)
    with grpc.insecure_channel(hub.stack.envoy_target) as channel:
        reply = usage_grpc.UsageServiceStub(channel).GetUsage(
            usage_pb.GetUsageRequest(), metadata=key.metadata, timeout=30)
        records = usage_grpc.UsageServiceStub(channel).ListUsageRecords(
            usage_pb.ListUsageRecordsRequest(), metadata=key.metadata, timeout=30)
    assert reply.key_id == key.id, "a key's own usage by default"
    assert (reply.total.requests, reply.total.images) == (1, 3)
    assert str(reply.total.images) == rest["total"]["images"]
    assert [r.request_id for r in records.records] == [r["request_id"] for r in hub.records(key)]


def test_a_key_reads_its_own_usage_and_an_admin_every_key(hub: Hub) -> None:
    first, second = hub.create_key("first"), hub.create_key("second")
    assert hub.generate(first).status_code == 200
    assert hub.generate(second, n=2).status_code == 200
    base = hub.stack.base_url

    own = httpx.get(f"{base}/api/usage", headers=first.headers)
    assert own.status_code == 200 and own.json()["total"]["images"] == "1"
    for params in ({"key_id": second.id}, {"key_id": "-"}):
        assert_error(httpx.get(f"{base}/api/usage", params=params, headers=first.headers),
                     403, "key_id", "admin_key_required")
        assert_error(httpx.get(f"{base}/api/usage/records", params=params,
                               headers=first.headers), 403, "key_id", "admin_key_required")

    assert hub.usage(second)["total"]["images"] == "2"
    every = hub.usage("-")
    assert every["key_id"] == "-"
    assert int(every["total"]["images"]) >= 3
    every_records = {r["request_id"] for r in hub.records("-")}
    assert {r["request_id"] for r in hub.records(first) + hub.records(second)} <= every_records


def test_records_page_newest_first_and_filter(hub: Hub) -> None:
    key = hub.create_key("pages")
    ids = [hub.generate(key).headers["x-request-id"] for _ in range(5)]
    assert hub.generate(key, size="big").status_code == 400

    pages, token = [], ""
    while True:
        page = hub.admin.get("/api/usage/records",
                             params={"key_id": key.id, "page_size": 2, "page_token": token})
        assert page.status_code == 200, page.text
        pages.append([r["request_id"] for r in page.json()["records"]])
        token = page.json().get("next_page_token", "")
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 2]
    assert [rid for page in pages for rid in page][1:] == ids[::-1]
    failed = hub.records(key, status="INVALID_VALUE")
    assert len(failed) == 1
    later = hub.records(key, start_time=failed[0]["create_time"])
    assert [r["request_id"] for r in later] == [failed[0]["request_id"]]


@pytest.mark.parametrize(("params", "param"), [
    ({"start_date": "yesterday"}, "start_date"),
    ({"start_date": "2026-11-02", "end_date": "2026-11-01"}, "start_date"),
])
def test_bad_report_range_is_400(hub: Hub, params: dict, param: str) -> None:
    assert_error(hub.admin.get("/api/usage", params=params), 400, param)


def test_default_prices() -> None:
    """Today's list prices, priced by the model that serves (units: USD)."""
    registry = load_registry()
    rate = Decimal(1000)

    def usd(model: str, quality: str, size: str | None, images: int = 1,
            tokens: TokenUsage | None = None) -> float:
        return cost(registry.get(model).price, quality=quality, size=size, images=images,
                    tokens=tokens, credits_per_usd=rate).usd

    assert usd("dall-e-3", "hd", "1792x1024") == pytest.approx(0.12)
    assert usd("dall-e-2", "standard", "256x256", images=3) == pytest.approx(0.048)
    assert usd("gpt-image-2", "medium", "1024x1024") == pytest.approx(0.053)
    assert usd("gpt-image-2", "high", "2048x2048") == pytest.approx(
        0.165 * 2048 * 2048 / (1536 * 1024)), "from the nearest size, by pixels"
    assert usd("gpt-image-2", "auto", None) == pytest.approx(0.211), "auto: the dearest"
    tokens = TokenUsage(input_text=1_000, input_image=2_000, output_image=7_024)
    assert usd("gpt-image-2", "high", "1024x1024", tokens=tokens) == pytest.approx(
        (1_000 * 5 + 2_000 * 8 + 7_024 * 30) / 1e6), "tokens, when reported, win"
    assert usd("gpt-image-2-2026-04-21", "low", "1024x1024") == pytest.approx(0.006)
    assert usd("local", "standard", "64x64") == 0


def test_cost_is_exact_in_nanos_and_credits() -> None:
    price = Price.model_validate({"per_image": {"*": {"*": 0.0336}}})
    result = cost(price, quality=None, size=None, images=3, tokens=None,
                  credits_per_usd=Decimal("1000"))
    assert (result.usd_nanos, result.credits_nanos) == (100_800_000, 100_800_000_000)
