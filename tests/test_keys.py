"""API keys as an operator and their users meet them, on SQLite and on PostgreSQL: the
admin API through both doors, the CLI, and each way a key is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import pytest
from google.protobuf import timestamp_pb2

from aigne.hub.v1 import admin_service_pb2 as admin_pb
from aigne.hub.v1 import admin_service_pb2_grpc as admin_grpc
from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc as image_grpc
from tests.hub import ADMIN_KEY, GENERATIONS, Hub, Key
from tests.stack import TEST_KEY
from tests.test_bad_input import assert_error

ADMIN_METADATA = (("authorization", f"Bearer {ADMIN_KEY}"),)


def test_admin_creates_lists_limits_and_revokes_a_key_over_rest(hub: Hub) -> None:
    created = hub.admin.post("/api/admin/keys", json={
        "name": "team blue", "limits": {"allowed_models": ["local"], "daily_image_quota": 20}})
    assert created.status_code == 200, created.text
    secret, view = created.json()["secret"], created.json()["key"]
    hub.secrets.append(secret)
    assert secret.startswith("ahk-") and len(secret) > 40
    assert view["prefix"] == secret[:12] and view["name"] == "team blue"
    assert view["limits"] == {"allowed_models": ["local"], "daily_image_quota": 20}, \
        "a limit that does not apply is left out"
    assert not view.get("admin") and view["source"] == "api"
    key = Key(view["id"], secret)
    assert hub.generate(key).status_code == 200

    listing = hub.admin.get("/api/admin/keys")
    assert listing.status_code == 200
    assert secret not in listing.text and view["id"] in listing.text
    shown = hub.get_key(key)
    assert shown["images_today"] == 1 and shown["images_this_month"] == 1

    changed = hub.set_limits(key, requests_per_minute=100)
    assert changed["limits"] == {"requests_per_minute": 100}, "a limit left out is removed"

    revoked = hub.admin.post(f"/api/admin/keys/{key.id}:revoke")
    assert revoked.status_code == 200 and revoked.json()["key"]["revoke_time"]
    assert_error(hub.generate(key), 403, None, "key_revoked")


def test_rest_answers_leave_out_what_is_not_set_and_keep_counts_at_zero(hub: Hub) -> None:
    """Envoy printed typed answers with every unset field: `"daily_image_quota": 0` for a
    key without a quota, `"next_page_token": ""` on the last page. The server writes them
    now: a limit that does not apply is absent; counts and flags are there at 0 and false;
    timestamps are RFC 3339 strings. gRPC carries the same messages as before."""
    created = hub.admin.post("/api/admin/keys", json={"name": "no limits"})
    assert created.status_code == 200, created.text
    assert created.headers["content-type"].startswith("application/json")
    hub.secrets.append(created.json()["secret"])
    view = created.json()["key"]
    assert view["limits"] == {}, view
    assert view["images_today"] == 0 and view["images_this_month"] == 0
    assert view["admin"] is False and "revoke_time" not in view
    assert datetime.fromisoformat(view["create_time"].replace("Z", "+00:00")) <= datetime.now(UTC)
    shown = hub.admin.get(f"/api/admin/keys/{view['id']}").json()["key"]
    assert shown == view
    last_page = hub.admin.get("/api/admin/keys", params={"page_size": 1000}).json()
    assert "next_page_token" not in last_page and last_page["keys"]
    with grpc.insecure_channel(hub.stack.envoy_target) as channel:
        typed = admin_grpc.AdminServiceStub(channel).GetKey(
            admin_pb.GetKeyRequest(key_id=view["id"]), metadata=ADMIN_METADATA, timeout=30)
    assert typed.key.limits == admin_pb.KeyLimits() and typed.key.images_today == 0


def test_listing_pages_through_every_key(hub: Hub) -> None:
    made = {hub.create_key(f"page test {i}").id for i in range(5)}
    seen: list[str] = []
    token = ""
    while True:
        page = hub.admin.get("/api/admin/keys", params={"page_size": 2, "page_token": token})
        assert page.status_code == 200, page.text
        assert len(page.json()["keys"]) <= 2
        seen += [key["id"] for key in page.json()["keys"]]
        token = page.json().get("next_page_token", "")
        if not token:
            break
    assert made <= set(seen) and len(seen) == len(set(seen))


@pytest.mark.parametrize("door", ["envoy", "server"])
def test_admin_service_over_grpc(hub: Hub, door: str) -> None:
    target = hub.stack.envoy_target if door == "envoy" else hub.stack.server_target
    with grpc.insecure_channel(target) as channel:
        admin = admin_grpc.AdminServiceStub(channel)
        expires = timestamp_pb2.Timestamp()
        expires.FromDatetime(datetime.now(UTC) + timedelta(days=30))
        created = admin.CreateKey(admin_pb.CreateKeyRequest(
            name="grpc key", limits=admin_pb.KeyLimits(monthly_image_quota=7,
                                                       expire_time=expires)),
            metadata=ADMIN_METADATA, timeout=30)
        hub.secrets.append(created.secret)
        assert created.key.limits.monthly_image_quota == 7
        assert created.key.limits.expire_time.seconds == expires.seconds

        listed = admin.ListKeys(admin_pb.ListKeysRequest(), metadata=ADMIN_METADATA, timeout=30)
        assert created.key.id in [key.id for key in listed.keys]
        limited = admin.SetKeyLimits(admin_pb.SetKeyLimitsRequest(
            key_id=created.key.id, limits=admin_pb.KeyLimits(daily_image_quota=3)),
            metadata=ADMIN_METADATA, timeout=30)
        assert limited.key.limits.daily_image_quota == 3
        assert not limited.key.limits.HasField("expire_time")
        revoked = admin.RevokeKey(admin_pb.RevokeKeyRequest(key_id=created.key.prefix),
                                  metadata=ADMIN_METADATA, timeout=30)
        assert revoked.key.HasField("revoke_time")

        with pytest.raises(grpc.RpcError) as caught:
            image_grpc.ImageServiceStub(channel).Generate(
                pb.GenerateRequest(prompt="x", size="32x32"),
                metadata=(("authorization", f"Bearer {created.secret}"),), timeout=30)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/admin/keys"), ("POST", "/api/admin/keys"), ("GET", "/api/admin/keys/x"),
    ("PUT", "/api/admin/keys/x/limits"), ("POST", "/api/admin/keys/x:revoke")])
def test_non_admin_key_cannot_call_the_admin_api_over_rest(hub: Hub, method: str,
                                                           path: str) -> None:
    for token in (TEST_KEY, hub.create_key("not an admin").secret):
        answer = httpx.request(method, f"{hub.stack.base_url}{path}", json={"name": "x"},
                               headers={"Authorization": f"Bearer {token}"})
        assert_error(answer, 403, None, "admin_key_required")
    assert_error(httpx.request(method, f"{hub.stack.base_url}{path}", json={}), 401, None,
                 "missing_api_key")


@pytest.mark.parametrize("door", ["envoy", "server"])
def test_non_admin_key_cannot_call_the_admin_api_over_grpc(hub: Hub, door: str) -> None:
    target = hub.stack.envoy_target if door == "envoy" else hub.stack.server_target
    key = hub.create_key("not an admin either")
    with grpc.insecure_channel(target) as channel:
        admin = admin_grpc.AdminServiceStub(channel)
        for call in (lambda m: admin.ListKeys(admin_pb.ListKeysRequest(), metadata=m, timeout=30),
                     lambda m: admin.CreateKey(admin_pb.CreateKeyRequest(name="sneaky"),
                                               metadata=m, timeout=30),
                     lambda m: admin.RevokeKey(admin_pb.RevokeKeyRequest(key_id=key.id),
                                               metadata=m, timeout=30)):
            with pytest.raises(grpc.RpcError) as caught:
                call(key.metadata)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert hub.generate(key).status_code == 200, "the key itself still works"


def test_expired_key_is_refused_at_once(hub: Hub) -> None:
    key = hub.create_key("expires", expire_time=_rfc3339(datetime.now(UTC) + timedelta(days=1)))
    assert hub.generate(key).status_code == 200

    hub.set_limits(key, expire_time=_rfc3339(datetime.now(UTC) - timedelta(seconds=1)))

    assert_error(hub.generate(key), 403, None, "key_expired")
    assert grpc_error(hub.stack.server_target, key).code() == grpc.StatusCode.PERMISSION_DENIED


def test_key_that_expires_while_in_use_is_refused_from_then_on(hub: Hub) -> None:
    key = hub.create_key("short-lived",
                         expire_time=_rfc3339(datetime.now(UTC) + timedelta(seconds=2)))
    assert hub.generate(key).status_code == 200
    time.sleep(2.2)
    assert_error(hub.generate(key), 403, None, "key_expired")


def test_model_outside_the_allow_list_is_403(hub: Hub) -> None:
    key = hub.create_key("old-local only", allowed_models=["old-local"])

    assert hub.generate(key, model="old-local").status_code == 200
    error = assert_error(hub.generate(key, model="local"), 403, "model", "model_not_allowed")
    assert "local" in error["message"]
    no_model = httpx.post(f"{hub.stack.base_url}{GENERATIONS}", headers=key.headers,
                          json={"prompt": "x", "size": "32x32"})  # the default model: local
    assert_error(no_model, 403, "model", "model_not_allowed")
    error = grpc_error(hub.stack.envoy_target, key, model="local")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(("limits", "param"), [
    ({"allowed_models": ["no-such-model"]}, "limits.allowed_models"),
    ({"daily_image_quota": -1}, "limits.daily_image_quota"),
])
def test_limits_that_make_no_sense_are_400(hub: Hub, limits: dict, param: str) -> None:
    answer = hub.admin.post("/api/admin/keys", json={"name": "bad limits", "limits": limits})
    assert_error(answer, 400, param)


def test_unknown_key_is_404(hub: Hub) -> None:
    assert_error(hub.admin.get("/api/admin/keys/key_nope"), 404, "key_id", "key_not_found")
    assert_error(hub.admin.post("/api/admin/keys/key_nope:revoke"), 404, "key_id",
                 "key_not_found")


def test_cli_creates_limits_lists_and_revokes(hub: Hub) -> None:
    created = hub.stack.cli("keys", "create", "cli key", "--models", "local,old-local",
                            "--daily", "2", "--rpm", "50", "--expires", "2099-01-01").stdout
    secret = created.split("keep it safe): ", 1)[1].strip()
    hub.secrets.append(secret)
    key_id = created.split()[1]
    key = Key(key_id, secret)
    assert hub.generate(key, n=2).status_code == 200
    assert_error(hub.generate(key), 429, None, "daily_quota_exceeded")

    changed = hub.stack.cli("keys", "limits", secret[:12], "--daily", "0", "--models", "all").stdout
    assert "50 requests/min" in changed and "images/day" not in changed
    assert hub.generate(key).status_code == 200, "no daily quota any more"

    listing = hub.stack.cli("keys", "list").stdout
    line = next(line for line in listing.splitlines() if line.startswith(key_id))
    assert "50 requests/min" in line and "expires 2099-01-01" in line and "active" in line
    assert secret not in listing
    hub.stack.cli("keys", "revoke", key_id)
    assert_error(hub.generate(key), 403, None, "key_revoked")
    assert "revoked" in hub.stack.cli("keys", "list").stdout


def test_no_key_digest_or_secret_in_logs_or_error_bodies(hub: Hub) -> None:
    """Every way a key can fail, through both doors; then look for it everywhere."""
    good = hub.create_key("logged key")
    revoked = hub.create_key("revoked key")
    hub.admin.post(f"/api/admin/keys/{revoked.id}:revoke")
    wrong = Key("none", "ahk-" + "w" * 43)
    bodies = [hub.generate(good, size="big").text, hub.generate(good, model="nope").text,
              hub.generate(revoked).text, hub.generate(wrong).text,
              httpx.get(f"{hub.stack.base_url}/api/admin/keys", headers=good.headers).text,
              httpx.get(f"{hub.stack.base_url}/api/usage",
                        params={"key_id": "-"}, headers=good.headers).text]
    for key in (revoked, wrong):
        error = grpc_error(hub.stack.envoy_target, key)
        bodies.append(str(error.details()) + str(error.trailing_metadata()))

    hash_secret = (hub.stack.var_dir / "key-hash-secret").read_text().strip()
    needles = {hash_secret}
    for secret in [*hub.secrets, TEST_KEY, wrong.secret, good.secret, revoked.secret]:
        digest = hmac.new(hash_secret.encode(), secret.encode(), hashlib.sha256).digest()
        needles |= {secret, digest.hex(), base64.b64encode(digest).decode(),
                    base64.urlsafe_b64encode(digest).decode().rstrip("=")}
    log = hub.stack.log_path.read_text(errors="replace")
    for needle in needles:
        assert needle not in log
        assert all(needle not in body for body in bodies)


def grpc_error(target: str, key: Key, **fields: str) -> grpc.RpcError:
    """The error a Generate call of `key` gets over gRPC."""
    request = pb.GenerateRequest(prompt="x", size="32x32", **fields)
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as caught:
        image_grpc.ImageServiceStub(channel).Generate(request, metadata=key.metadata,
                                                      timeout=30)
    return caught.value


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
