"""Provider credentials and routing, against two fake OpenAI upstreams and a fake Azure
OpenAI on 127.0.0.1: deployments and encrypted credentials through the admin API, weighted
selection, health (401 disables, 429 rests, 5xx cools down), fallback only on the upstream's
failures, attempts in the usage record, pinning, the admin test action, and what the admin
REST answers hold."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import httpx
import pytest

from aigne.hub.v1 import deployment_service_pb2 as deployment_pb
from aigne.hub.v1 import deployment_service_pb2_grpc as deployment_grpc
from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc
from tests.conftest import GRPC_AUTH, GRPC_OPTIONS, http_client
from tests.fakes.openai_fake import FakeAzureOpenAI, FakeOpenAI, error
from tests.hub import ADMIN_KEY
from tests.stack import ROOT, TEST_KEY, Stack
from tests.test_bad_input import assert_error

ADMIN_METADATA = (("authorization", f"Bearer {ADMIN_KEY}"),)
GENERATIONS = "/api/images/generations"
SMALL = {"model": "gpt-image-2", "prompt": "x", "size": "1024x640",
         "response_format": "b64_json"}


@dataclass
class Upstreams:
    alpha: FakeOpenAI
    beta: FakeOpenAI
    azure: FakeAzureOpenAI

    def all(self) -> tuple[FakeOpenAI, ...]:
        return self.alpha, self.beta, self.azure


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    fakes = Upstreams(FakeOpenAI(api_key="sk-alpha-secret-0000000001").start(),
                      FakeOpenAI(api_key="sk-beta-secret-00000000002").start(),
                      FakeAzureOpenAI().start())
    yield fakes
    for fake in fakes.all():
        fake.stop()


@pytest.fixture(scope="module")
def routing_stack(tmp_path_factory: pytest.TempPathFactory,
                  upstreams: Upstreams) -> Iterator[Stack]:
    """No provider variables: every OpenAI deployment comes from the admin API."""
    env = {"AIGNE_HUB_ADMIN_API_KEYS": ADMIN_KEY, "AIGNE_HUB_UPSTREAM_RETRY_BASE_SECONDS": "0.05",
           "AIGNE_HUB_ROUTING_REFRESH_SECONDS": "0.2"}
    with Stack(tmp_path_factory.mktemp("routing"), env) as running:
        yield running


@pytest.fixture
def admin(routing_stack: Stack, upstreams: Upstreams) -> Iterator[httpx.Client]:
    """The admin API, with no deployment left from another test and quiet fakes."""
    with httpx.Client(base_url=routing_stack.base_url, timeout=60,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        for deployment in client.get("/api/admin/deployments").json()["deployments"]:
            if deployment["source"] == "api":
                client.delete(f"/api/admin/deployments/{deployment['id']}")
        for fake in upstreams.all():
            fake.clear()
        yield client


def add(admin: httpx.Client, name: str, fake: FakeOpenAI, *, weight: int = 1,
        priority: int = 0, kind: str = "openai", **fields: object) -> dict:
    """A deployment in front of `fake`, with one credential holding `fake`'s key."""
    base_url = fake.url if kind == "azure" else f"{fake.url}/v1"
    made = admin.post("/api/admin/deployments", json={
        "name": name, "kind": kind, "base_url": base_url, "weight": weight,
        "priority": priority, "enabled": True, **fields})
    assert made.status_code == 200, made.text
    deployment = made.json()["deployment"]
    credential(admin, deployment["id"], fake.api_key, name=f"{name} key")
    return deployment


def credential(admin: httpx.Client, deployment_id: str, secret: str, *, name: str = "key",
               weight: int = 1) -> dict:
    added = admin.post(f"/api/admin/deployments/{deployment_id}/credentials",
                       json={"name": name, "secret": secret, "weight": weight})
    assert added.status_code == 200, added.text
    assert secret not in added.text
    return added.json()["credential"]


def listed(admin: httpx.Client, name: str) -> dict:
    return next(d for d in admin.get("/api/admin/deployments").json()["deployments"]
                if d["name"] == name)


def generate(stack: Stack, **fields: object) -> httpx.Response:
    with http_client(stack) as client:
        return client.post(GENERATIONS, json={**SMALL, **fields})


def used_keys(fake: FakeOpenAI) -> Counter[str]:
    return Counter(r.headers.get("authorization", r.headers.get("api-key", ""))
                   for r in fake.requests_to("generations"))


def test_weighted_selection_over_a_thousand_requests(admin, routing_stack, upstreams) -> None:
    add(admin, "alpha", upstreams.alpha, weight=3)
    add(admin, "beta", upstreams.beta, weight=1)
    request = pb.GenerateRequest(**SMALL)

    with grpc.insecure_channel(routing_stack.server_target, options=GRPC_OPTIONS) as channel:
        stub = image_service_pb2_grpc.ImageServiceStub(channel)
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: stub.Generate(request, metadata=GRPC_AUTH,
                                                            timeout=60), range(1000)))

    assert all(len(r.data) == 1 for r in replies)
    alpha, beta = (len(f.requests_to("generations")) for f in (upstreams.alpha, upstreams.beta))
    assert alpha + beta == 1000
    assert abs(alpha / 1000 - 0.75) <= 0.05, (alpha, beta)


def test_credential_refused_with_401_is_disabled_until_enabled(admin, routing_stack,
                                                               upstreams) -> None:
    alpha = add(admin, "alpha", upstreams.alpha)
    bad = credential(admin, alpha["id"], "sk-alpha-wrong-key-000000", name="stale", weight=50)
    add(admin, "beta", upstreams.beta, priority=1)

    answers = [generate(routing_stack) for _ in range(6)]

    assert [a.status_code for a in answers] == [200] * 6
    assert used_keys(upstreams.alpha)["Bearer sk-alpha-wrong-key-000000"] == 1
    stale = next(c for c in listed(admin, "alpha")["credentials"] if c["id"] == bad["id"])
    assert stale["state"] == "disabled" and not stale["enabled"]
    assert stale["disabled_reason"].startswith("UPSTREAM_AUTH_FAILED") and stale["disable_time"]

    enabled = admin.put(f"/api/admin/credentials/{bad['id']}", json={"enabled": True,
                                                                      "weight": 50})
    assert enabled.json()["credential"]["state"] == "active"
    time.sleep(0.3)
    stale_key = "Bearer sk-alpha-wrong-key-000000"
    for _ in range(10):  # credentials are drawn by weight: 50 to 1 for the stale one
        assert generate(routing_stack).status_code == 200
        if used_keys(upstreams.alpha)[stale_key] > 1:
            break
    assert used_keys(upstreams.alpha)[stale_key] == 2


def test_429_rests_a_credential_which_comes_back_by_itself(admin, routing_stack,
                                                          upstreams) -> None:
    add(admin, "alpha", upstreams.alpha)
    add(admin, "beta", upstreams.beta, priority=1)
    upstreams.alpha.script("generations", error(429, "Rate limit reached.",
                                                code="rate_limit_exceeded",
                                                headers={"retry-after": "2"}))

    first = generate(routing_stack)
    during = [generate(routing_stack) for _ in range(3)]

    assert first.status_code == 200 and all(a.status_code == 200 for a in during)
    assert len(upstreams.alpha.requests_to("generations")) == 1, "resting: not called"
    assert len(upstreams.beta.requests_to("generations")) == 4
    assert listed(admin, "alpha")["credentials"][0]["state"] == "cooling"
    time.sleep(2.3)
    assert generate(routing_stack).status_code == 200
    assert len(upstreams.alpha.requests_to("generations")) == 2, "back after Retry-After"


def test_failing_deployment_is_skipped_and_cools_down(admin, routing_stack, upstreams) -> None:
    add(admin, "alpha", upstreams.alpha)
    add(admin, "beta", upstreams.beta, priority=1)
    failure = error(500, "The server had an error.", kind="server_error")
    upstreams.alpha.script("generations", failure, failure, failure)

    answers = [generate(routing_stack) for _ in range(5)]

    assert [a.status_code for a in answers] == [200] * 5
    assert len(upstreams.alpha.requests_to("generations")) == 3, "three failures, then rest"
    assert len(upstreams.beta.requests_to("generations")) == 5
    cooled = listed(admin, "alpha")
    assert cooled["state"] == "cooling" and cooled["consecutive_failures"] == 3
    assert cooled["last_error"].startswith("UPSTREAM_ERROR") and cooled["cooldown_until"]


def test_content_refusal_is_not_tried_elsewhere(admin, routing_stack, upstreams) -> None:
    add(admin, "alpha", upstreams.alpha)
    add(admin, "beta", upstreams.beta, priority=1)
    upstreams.alpha.script("generations", error(400, "Rejected by the safety system.",
                                                code="moderation_blocked"))

    assert_error(generate(routing_stack), 400, "prompt", "content_policy_violation")
    assert upstreams.beta.received == []


def test_every_attempt_is_in_the_usage_record_and_charged_once(admin, routing_stack,
                                                              upstreams) -> None:
    alpha = add(admin, "alpha", upstreams.alpha)
    beta = add(admin, "beta", upstreams.beta, priority=1)
    upstreams.alpha.script("generations", error(503, "Overloaded.", kind="server_error"))

    answer = generate(routing_stack, n=2)
    assert answer.status_code == 200, answer.text
    request_id = answer.headers["x-request-id"]

    records = admin.get("/api/usage/records", params={"key_id": "-",
                                                      "request_id": request_id}).json()
    record = records["records"][0]
    attempts = [(a["deployment_id"], a["outcome"]) for a in record["attempts"]]
    assert attempts == [(alpha["id"], "UPSTREAM_ERROR"), (beta["id"], "OK")]
    assert all(a["credential_id"].startswith("cred_") for a in record["attempts"])
    assert record["images"] == 2 and record["cost_usd"] > 0


def test_azure_deployment_and_pinning(admin, routing_stack, upstreams) -> None:
    add(admin, "alpha", upstreams.alpha)
    add(admin, "azure-eu", upstreams.azure, kind="azure", api_version="2025-04-01-preview",
        model_map={"gpt-image-2": "my-gpt-image"})

    pinned = [generate(routing_stack, model="azure-eu/gpt-image-2") for _ in range(3)]
    by_kind = generate(routing_stack, model="openai/gpt-image-2")

    assert [a.status_code for a in pinned] == [200] * 3 and by_kind.status_code == 200
    calls = upstreams.azure.requests_to("generations")
    assert len(calls) == 3, "pinned: only the Azure deployment"
    assert calls[0].path == "/openai/deployments/my-gpt-image/images/generations" \
        "?api-version=2025-04-01-preview"
    assert calls[0].headers["api-key"] == FakeAzureOpenAI.api_key
    assert_error(generate(routing_stack, model="nowhere/gpt-image-2"), 404, "model",
                 "deployment_not_found")


def test_admin_test_action_shows_in_the_model_listing(admin, routing_stack, upstreams) -> None:
    add(admin, "alpha", upstreams.alpha)
    add(admin, "beta", upstreams.beta)
    upstreams.beta.script("generations", error(500, "Broken.", kind="server_error"))

    results = {r["name"]: r for r in admin.post("/api/admin/deployments:test",
                                                json={}).json()["results"]}

    assert results["alpha"]["status"] == "OK" and results["alpha"]["latency_ms"] > 0
    assert results["beta"]["status"] == "UPSTREAM_ERROR"
    assert results["local"]["status"] == "OK"
    with http_client(routing_stack) as client:
        models = {m["id"]: m for m in client.get("/api/models").json()["data"]}
    shown = {d["name"]: d for d in models["gpt-image-2"]["deployments"]}
    assert shown["alpha"]["last_test_status"] == "OK" and shown["alpha"]["last_test_time"]
    assert shown["beta"]["last_test_status"] == "UPSTREAM_ERROR"
    assert models["dall-e-2"]["deployments"] == models["gpt-image-2"]["deployments"]


def test_rest_answers_leave_out_what_is_not_set_and_keep_zeros_that_matter(
        admin, routing_stack, upstreams) -> None:
    """Envoy printed typed answers with every unset field: `"base_url": ""` for the
    provider's own URL, `"last_test_latency_ms": 0` for a deployment never tested. The server
    writes them now: what is not set is absent; priority 0, enabled false and a failure count
    of 0 are there; maps are objects. gRPC carries the same messages as before."""
    made = admin.post("/api/admin/deployments", json={
        "name": "plain", "kind": "openai", "models": ["gpt-image-2"], "enabled": False})
    assert made.status_code == 200, made.text
    assert made.headers["content-type"].startswith("application/json")
    plain = made.json()["deployment"]
    assert {"base_url", "api_version", "cooldown_until", "last_error", "last_test_status",
            "last_test_latency_ms", "last_test_time"}.isdisjoint(plain), plain
    assert (plain["priority"], plain["enabled"], plain["consecutive_failures"]) == (0, False, 0)
    assert plain["weight"] == 1 and plain["state"] and plain["source"] == "api"
    assert (plain["options"], plain["model_map"], plain["credentials"]) == ({}, {}, [])
    key = credential(admin, plain["id"], "sk-plain-secret-000000000")
    assert {"disabled_reason", "disable_time", "cooldown_until"}.isdisjoint(key), key
    assert key["enabled"] is True and key["weight"] == 1 and key["create_time"].endswith("Z")
    resting = admin.put(f"/api/admin/credentials/{key['id']}", json={"enabled": False})
    key = resting.json()["credential"]
    assert key["enabled"] is False and key["state"] == "disabled" and key["weight"] == 1

    add(admin, "alpha", upstreams.alpha, model_map={"gpt-image-2": "gpt-image-2"})
    (tested,) = admin.post("/api/admin/deployments:test",
                           json={"deployment_id": "alpha"}).json()["results"]
    assert tested["status"] == "OK" and "message" not in tested and tested["latency_ms"] > 0
    alpha = listed(admin, "alpha")
    assert alpha["model_map"] == {"gpt-image-2": "gpt-image-2"}
    assert alpha["last_test_status"] == "OK" and alpha["last_test_latency_ms"] > 0
    assert alpha["base_url"] == f"{upstreams.alpha.url}/v1" and "api_version" not in alpha
    assert listed(admin, "plain") == {**plain, "credentials": [key]}

    with grpc.insecure_channel(routing_stack.envoy_target) as channel:
        typed = deployment_grpc.DeploymentServiceStub(channel).ListDeployments(
            deployment_pb.ListDeploymentsRequest(), metadata=ADMIN_METADATA, timeout=30)
    same = next(d for d in typed.deployments if d.name == "plain")
    assert (same.base_url, same.api_version, same.last_test_latency_ms) == ("", "", 0)
    assert (same.priority, same.enabled, same.credentials[0].disabled_reason) == (0, False, "")
    assert not same.HasField("last_test_time")
    gone = admin.delete(f"/api/admin/deployments/{plain['id']}")
    assert gone.status_code == 200 and gone.json() == {}


def test_secrets_are_encrypted_at_rest_and_never_shown(admin, routing_stack,
                                                       upstreams) -> None:
    add(admin, "alpha", upstreams.alpha)
    add(admin, "beta", upstreams.beta)
    assert generate(routing_stack).status_code == 200

    listing = admin.get("/api/admin/deployments").text
    stored = b"".join(p.read_bytes() for p in routing_stack.var_dir.glob("hub.db*"))
    for secret in (upstreams.alpha.api_key, upstreams.beta.api_key):
        assert secret not in listing
        assert secret.encode() not in stored
        assert base64.b64encode(secret.encode()) not in stored
        assert secret not in routing_stack.log_path.read_text()


def test_deployment_admin_needs_an_admin_key(routing_stack) -> None:
    for key, status in ((TEST_KEY, 403), (None, 401)):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        answer = httpx.get(f"{routing_stack.base_url}/api/admin/deployments", headers=headers)
        assert_error(answer, status, None)


def test_bad_deployments_are_refused(admin, upstreams) -> None:
    for body, param in (({"name": "x", "kind": "bedrock", "enabled": True}, "kind"),
                        ({"name": "a/b", "kind": "openai", "enabled": True}, "name"),
                        ({"name": "az", "kind": "azure", "enabled": True}, "base_url")):
        assert_error(admin.post("/api/admin/deployments", json=body), 400, param)
    add(admin, "alpha", upstreams.alpha)
    assert_error(admin.post("/api/admin/deployments", json={
        "name": "alpha", "kind": "openai", "enabled": True}), 409, "name")


def test_cli_adds_a_credential_from_stdin(admin, routing_stack, upstreams) -> None:
    routing_stack.cli("deployments", "add", "gamma", "--kind", "openai",
                      "--base-url", f"{upstreams.beta.url}/v1", "--models", "gpt-image-2")
    added = subprocess.run([sys.executable, "-m", "service", "credentials", "add", "gamma",
                            "--name", "from stdin"], input=upstreams.beta.api_key + "\n",
                           cwd=ROOT, env=routing_stack.env, capture_output=True, text=True,
                           timeout=60, check=True)
    assert "added cred_" in added.stdout and upstreams.beta.api_key not in added.stdout
    listing = routing_stack.cli("deployments", "list").stdout
    assert "gamma" in listing and "from stdin" in listing
    assert upstreams.beta.api_key not in listing
    time.sleep(0.3)
    assert generate(routing_stack, model="gamma/gpt-image-2").status_code == 200
