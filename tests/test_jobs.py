"""Jobs, on SQLite and on PostgreSQL: accepted at once, run in the background, read back
with the synchronous answer, their webhooks signed (verified with the Standard Webhooks
library, as a receiver would), retried and guarded; a job in flight when the server stops
or dies finishes after the restart, charged once."""

from __future__ import annotations

import base64
import os
import signal
import time
import uuid
from collections.abc import Iterator

import grpc
import httpx
import pytest
import standardwebhooks

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import job_service_pb2 as job_pb
from aigne.hub.v1 import job_service_pb2_grpc as job_grpc
from tests.conftest import DATABASES, ImageHost, database_url, open_image, provider_env
from tests.fakes.google_fake import FakeGoogle
from tests.fakes.openai_fake import FakeOpenAI, error
from tests.fakes.server import Reply
from tests.hub import Hub, Key
from tests.long_running import WebhookReceiver, long_hub, long_stack_env, wait_for
from tests.stack import Stack
from tests.test_bad_input import assert_error

JOBS = "/api/images/jobs"
SLOW = Reply(as_usual=True, delay=1.5)


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    running = WebhookReceiver().start()
    yield running
    running.stop()


@pytest.fixture(scope="module", params=DATABASES)
def jobs_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             fake_openai: FakeOpenAI, fake_google: FakeGoogle, image_host: ImageHost,
             receiver: WebhookReceiver) -> Iterator[Hub]:
    var_dir = tmp_path_factory.mktemp(f"jobs-{request.param}")
    with long_hub(var_dir, provider_env(fake_openai, fake_google, image_host),
                  database_url(request.param, request, var_dir), receiver) as running:
        yield running


@pytest.fixture
def key(jobs_hub: Hub, fakes, receiver: WebhookReceiver) -> Key:
    receiver.clear()
    return jobs_hub.create_key(f"jobs {uuid.uuid4().hex[:6]}")


def create(hub: Hub, key: Key, headers: dict[str, str] | None = None,
           **body: object) -> httpx.Response:
    return httpx.post(f"{hub.stack.base_url}{JOBS}", timeout=30,
                      headers={**key.headers, **(headers or {})},
                      json={"model": "gpt-image-2", "prompt": "a lighthouse", **body})


def read(hub: Hub, key: Key, job_id: str, client: httpx.Client | None = None) -> httpx.Response:
    if client is None:
        return httpx.get(f"{hub.stack.base_url}{JOBS}/{job_id}", headers=key.headers,
                         timeout=30)
    return client.get(f"{hub.stack.base_url}{JOBS}/{job_id}", headers=key.headers)


def ended(hub: Hub, key: Key, job_id: str, timeout: float = 30) -> dict:
    return read_until(hub, key, job_id, lambda job: job["status"] in ("succeeded", "failed"),
                      timeout)


def read_until(hub: Hub, key: Key, job_id: str, done, timeout: float = 30) -> dict:  # type: ignore[no-untyped-def]
    """The job once `done(job)`, polled over one connection (not one per poll: ports are
    precious on a machine where every test starts servers on free ones)."""
    with httpx.Client(timeout=30) as client:
        def check() -> dict | None:
            job = read(hub, key, job_id, client).json()["job"]
            return job if done(job) else None
        return wait_for(check, timeout=timeout, every=0.2)


def verified(delivery, secret: str) -> dict:  # type: ignore[no-untyped-def]
    """The webhook's payload, once its signature verifies with the key's secret."""
    return standardwebhooks.Webhook(secret).verify(delivery.body, delivery.headers)


def test_a_job_answers_at_once_then_ends_with_the_synchronous_answer(
        jobs_hub: Hub, key: Key, fakes, receiver: WebhookReceiver) -> None:
    fakes[0].script("generations", SLOW)
    started = time.monotonic()
    answer = create(jobs_hub, key, n=2, response_format="b64_json",
                    webhook_url=f"{receiver.url}/hooks/a")
    assert answer.status_code == 200, answer.text
    assert time.monotonic() - started < 1.2, "accepted before the image is made"
    job, secret = answer.json()["job"], answer.json()["webhook_secret"]
    assert job["id"].startswith("job_") and job["status"] in ("queued", "running")
    assert job["webhook_status"] == "pending" and secret.startswith("whsec_")
    assert "result" not in job

    done = ended(jobs_hub, key, job["id"])
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["created"] == done["created"] == job["created"]
    assert [open_image(base64.b64decode(i["b64_json"])).size for i in result["data"]] == \
        [(1024, 1024)] * 2
    assert result["usage"]["output_tokens"] > 0
    assert read(jobs_hub, key, job["id"]).json()["job"]["result"] == result  # read again

    [delivery] = wait_for(lambda: receiver.deliveries("hooks/a"))
    payload = verified(delivery, secret)
    assert payload["type"] == "image.job.succeeded"
    assert payload["data"]["job"]["id"] == job["id"]
    assert "result" not in payload["data"]["job"], "b64_json images are read with GetJob"
    assert delivery.headers["webhook-id"] == f"msg_{job['id']}"
    read_until(jobs_hub, key, job["id"], lambda job: job["webhook_status"] == "delivered")
    assert len(fakes[0].requests_to("generations")) == 1
    assert [(r["status"], r["images"]) for r in jobs_hub.records(key)] == [("OK", 2)]


def test_jobs_over_grpc_and_who_may_read_them(jobs_hub: Hub, key: Key, fakes) -> None:
    with grpc.insecure_channel(jobs_hub.stack.envoy_target) as channel:
        stub = job_grpc.JobServiceStub(channel)
        created = stub.CreateJob(job_pb.CreateJobRequest(request=pb.GenerateRequest(
            model="local", prompt="a fox", size="64x64")), metadata=key.metadata, timeout=30)
        assert not created.webhook_secret

        def succeeded() -> job_pb.Job | None:
            job = stub.GetJob(job_pb.GetJobRequest(id=created.job.id), metadata=key.metadata,
                              timeout=30).job
            return job if job.status == "succeeded" else None

        job = wait_for(succeeded)
        other = jobs_hub.create_key("someone else")
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetJob(job_pb.GetJobRequest(id=job.id), metadata=other.metadata, timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert open_image(httpx.get(job.result.data[0].url).content).size == (64, 64)
    assert_error(read(jobs_hub, other, job.id), 404, "id", "job_not_found")
    assert jobs_hub.admin.get(f"{JOBS}/{job.id}").json()["job"]["status"] == "succeeded"


def test_a_webhook_is_retried_with_backoff_under_one_id(jobs_hub: Hub, key: Key,
                                                        receiver: WebhookReceiver) -> None:
    receiver.script("hooks/retry", Reply(500, raw=b""), Reply(503, raw=b""))
    answer = create(jobs_hub, key, model="local", size="64x64",
                    webhook_url=f"{receiver.url}/hooks/retry")
    job, secret = answer.json()["job"], answer.json()["webhook_secret"]

    deliveries = wait_for(lambda: (d := receiver.deliveries("hooks/retry")) and len(d) >= 3
                          and d)
    assert {d.headers["webhook-id"] for d in deliveries} == {f"msg_{job['id']}"}
    assert all(verified(d, secret)["data"]["job"]["status"] == "succeeded" for d in deliveries)
    assert verified(deliveries[0], secret)["data"]["job"]["result"]["data"][0]["url"]
    read_until(jobs_hub, key, job["id"], lambda job: job["webhook_status"] == "delivered")
    assert len(receiver.deliveries("hooks/retry")) == 3


def test_a_signature_made_with_another_secret_does_not_verify(jobs_hub: Hub, key: Key,
                                                              receiver: WebhookReceiver) -> None:
    answer = create(jobs_hub, key, model="local", size="64x64",
                    webhook_url=f"{receiver.url}/hooks/forged")
    [delivery] = wait_for(lambda: receiver.deliveries("hooks/forged"))
    other_secret = create(jobs_hub, jobs_hub.create_key("other"), model="local", size="64x64",
                          webhook_url=f"{receiver.url}/hooks/other").json()["webhook_secret"]
    assert other_secret != answer.json()["webhook_secret"]
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        verified(delivery, other_secret)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        tampered = type(delivery)(**{**delivery.__dict__, "body": delivery.body + b" "})
        verified(tampered, answer.json()["webhook_secret"])


@pytest.mark.parametrize(("url", "code"), [
    ("http://10.0.0.1/hook", "webhook_url_forbidden"),
    ("http://169.254.169.254/latest", "webhook_url_forbidden"),
    ("http://127.0.0.1:9/hook", "webhook_url_forbidden"),  # 127.0.0.1, but not the port allowed
    ("http://[::1]/hook", "webhook_url_forbidden"),
    ("ftp://example.com/hook", "invalid_webhook_url"),
    ("http://user:pw@127.0.0.1/hook", "invalid_webhook_url"),
])
def test_webhook_urls_to_private_addresses_are_refused(jobs_hub: Hub, key: Key, url: str,
                                                       code: str) -> None:
    assert_error(create(jobs_hub, key, model="local", webhook_url=url), 400, "webhook_url", code)


def test_a_failed_job_says_why_and_costs_nothing(jobs_hub: Hub, key: Key, fakes) -> None:
    fakes[0].script("generations", error(400, "Invalid value: 'x'.", param="quality",
                                         code="invalid_value"))
    job = create(jobs_hub, key).json()["job"]
    done = ended(jobs_hub, key, job["id"])
    assert done["status"] == "failed" and "result" not in done
    assert (done["error"]["code"], done["error"]["param"], done["error"]["http_status"]) == (
        "upstream_invalid_request", "quality", 400)
    assert [(r["status"], r["images"]) for r in jobs_hub.records(key)] == [
        ("UPSTREAM_INVALID_REQUEST", 0)]
    assert jobs_hub.get_key(key)["images_today"] == 0


def test_a_job_whose_images_are_gone_says_so(jobs_hub: Hub, key: Key, fakes) -> None:
    images = jobs_hub.stack.var_dir / "images"
    before = set(images.rglob("img_*"))
    job = create(jobs_hub, key, model="local", size="64x64",
                 response_format="b64_json").json()["job"]
    assert ended(jobs_hub, key, job["id"])["status"] == "succeeded"
    for path in set(images.rglob("img_*")) - before:  # as the retention sweep would
        path.unlink()
    assert_error(read(jobs_hub, key, job["id"]), 404, "id", "job_images_expired")


def test_the_quota_is_reserved_when_a_job_is_accepted(jobs_hub: Hub, fakes) -> None:
    key = jobs_hub.create_key("two a day", daily_image_quota=2)
    assert create(jobs_hub, key, model="local", n=2).status_code == 200
    assert_error(create(jobs_hub, key, model="local"), 429, None, "daily_quota_exceeded")


def test_creating_a_job_is_idempotent(jobs_hub: Hub, key: Key, fakes) -> None:
    headers = {"Idempotency-Key": f"job-{uuid.uuid4()}"}
    first = create(jobs_hub, key, headers, model="local", size="64x64")
    retry = create(jobs_hub, key, headers, model="local", size="64x64")
    assert retry.json()["job"]["id"] == first.json()["job"]["id"]
    assert retry.headers["idempotent-replayed"] == "true"
    assert create(jobs_hub, key, headers, model="local", size="32x32").status_code == 409
    ended(jobs_hub, key, first.json()["job"]["id"])
    # One job, one record; the refused request leaves its own, of no images.
    assert sorted((r["status"], r["images"]) for r in jobs_hub.records(key)) == [
        ("IDEMPOTENCY_KEY_REUSED", 0), ("OK", 1)]


def test_bad_job_requests_are_refused_at_once(jobs_hub: Hub, key: Key, fakes) -> None:
    assert_error(create(jobs_hub, key, n=11), 400, "n", "integer_above_max_value")
    assert_error(create(jobs_hub, key, stream=True), 400, "stream")
    assert_error(create(jobs_hub, key, webhook_url=3), 400, "webhook_url", "invalid_type")
    assert_error(read(jobs_hub, key, "job_nope"), 404, "id", "job_not_found")
    assert fakes[0].received == []


def test_slow_webhook_receivers_do_not_hold_job_slots(jobs_hub: Hub, key: Key, fakes,
                                                      receiver: WebhookReceiver) -> None:
    """Eight webhooks whose receiver takes 8 s to answer (as many as the four job slots
    twice over) once kept another key's job waiting 23 s; now they have their own pool."""
    receiver.script("hooks/slow", *[Reply(204, raw=b"", delay=8)] * 8)
    for _ in range(8):
        assert create(jobs_hub, key, model="local", size="64x64",
                      webhook_url=f"{receiver.url}/hooks/slow").status_code == 200
    wait_for(lambda: len(receiver.deliveries("hooks/slow")) >= 4)  # receivers are busy
    other = jobs_hub.create_key(f"other {uuid.uuid4().hex[:6]}")
    started = time.monotonic()
    job = create(jobs_hub, other, model="local", size="64x64").json()["job"]
    assert ended(jobs_hub, other, job["id"])["status"] == "succeeded"
    assert time.monotonic() - started < 5, "another key's job waited for webhooks"


def test_one_keys_many_jobs_do_not_keep_another_keys_job_waiting(jobs_hub: Hub, key: Key,
                                                                 fakes) -> None:
    """Twenty queued jobs of one key (each 1 s at the provider; four run at once) once
    kept another key's job waiting behind all of them; claiming is round-robin now."""
    fakes[0].script("generations", *[Reply(as_usual=True, delay=1.0)] * 21)
    many = [create(jobs_hub, key).json()["job"]["id"] for _ in range(20)]
    other = jobs_hub.create_key(f"other {uuid.uuid4().hex[:6]}")
    job = create(jobs_hub, other).json()["job"]
    assert ended(jobs_hub, other, job["id"], timeout=60)["status"] == "succeeded"
    with httpx.Client(timeout=30) as client:
        finished = [read(jobs_hub, key, job_id, client).json()["job"]["status"]
                    in ("succeeded", "failed") for job_id in many]
    assert sum(finished) <= 12, f"{sum(finished)} of the 20 ended first"
    for job_id in many:  # the rest end too
        ended(jobs_hub, key, job_id, timeout=60)


@pytest.fixture
def stack_settings() -> dict[str, str]:
    """Settings of `fresh_stack` besides the usual ones (a test parametrizes it)."""
    return {}


@pytest.fixture(params=DATABASES)
def fresh_stack(request: pytest.FixtureRequest, tmp_path, fake_openai: FakeOpenAI,
                fake_google: FakeGoogle, image_host: ImageHost, receiver: WebhookReceiver,
                fakes, stack_settings: dict[str, str]) -> Iterator[Hub]:
    """A stack of its own, to stop and start again."""
    env = long_stack_env(provider_env(fake_openai, fake_google, image_host),
                         database_url(request.param, request, tmp_path), receiver)
    stack = Stack(tmp_path, env={**env, **stack_settings}).start()
    running = Hub(stack, request.param)
    try:
        yield running
    finally:
        running.close()
        stack.stop()


def test_one_keys_slow_webhook_receiver_does_not_delay_another_keys_webhook(
        fresh_stack: Hub, fakes, receiver: WebhookReceiver) -> None:
    """Twelve jobs of one key whose receiver takes 6 s to answer once filled the webhook pool
    (eight), and another key's webhook waited for a slot; no key holds more than half the
    pool now. A stack of its own: no other test's deliveries in its pool."""
    receiver.clear()
    slow, other = (fresh_stack.create_key(f"{name} {uuid.uuid4().hex[:6]}")
                   for name in ("slow receiver", "other"))
    receiver.script("hooks/slow-receiver", *[Reply(204, raw=b"", delay=6)] * 12)
    for _ in range(12):
        assert create(fresh_stack, slow, model="local", size="64x64",
                      webhook_url=f"{receiver.url}/hooks/slow-receiver").status_code == 200
    wait_for(lambda: len(receiver.deliveries("hooks/slow-receiver")) >= 4)
    time.sleep(1)  # every slot the slow key may take is taken
    started = time.monotonic()
    assert create(fresh_stack, other, model="local", size="64x64",
                  webhook_url=f"{receiver.url}/hooks/other").status_code == 200
    wait_for(lambda: receiver.deliveries("hooks/other"), timeout=30, every=0.05)
    assert time.monotonic() - started < 3, "another key's webhook waited for the slow ones"
    assert len(receiver.deliveries("hooks/slow-receiver")) == 4  # the slow key's half
    wait_for(lambda: len(receiver.deliveries("hooks/slow-receiver")) == 12, timeout=60)


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_a_job_in_flight_when_the_server_stops_finishes_after_the_restart(
        fresh_stack: Hub, fakes, receiver: WebhookReceiver, stop: str) -> None:
    """Stopped, the server hands its running job back; killed, its claim lapses. Either
    way the restarted server runs the job again, to its end, and charges it once."""
    hub, fake_openai = fresh_stack, fakes[0]
    receiver.clear()
    fake_openai.script("generations", Reply(hang=True))
    key = hub.create_key("restart")
    answer = create(hub, key, webhook_url=f"{receiver.url}/hooks/restart")
    job = answer.json()["job"]
    wait_for(lambda: fake_openai.requests_to("generations"))

    if stop == "sigterm":
        hub.stack.stop()
    else:
        kill(hub.stack)
    assert fake_openai.wait_for_disconnect("generations")
    hub.stack.start()

    done = ended(hub, key, job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert len(fake_openai.requests_to("generations")) == 2
    [delivery] = wait_for(lambda: receiver.deliveries("hooks/restart"))
    assert verified(delivery, answer.json()["webhook_secret"])["data"]["job"]["id"] == job["id"]
    assert [(r["status"], r["images"]) for r in hub.records(key)] == [("OK", 1)]
    assert hub.get_key(key)["images_today"] == 1


@pytest.mark.parametrize("stack_settings", [{"AIGNE_HUB_JOB_MAX_ATTEMPTS": "1"}])
def test_a_job_interrupted_too_often_fails_and_costs_nothing(fresh_stack: Hub, fakes,
                                                             receiver: WebhookReceiver) -> None:
    hub, fake_openai = fresh_stack, fakes[0]
    receiver.clear()
    fake_openai.script("generations", Reply(hang=True))
    key = hub.create_key("interrupted")
    job = create(hub, key, webhook_url=f"{receiver.url}/hooks/interrupted").json()["job"]
    wait_for(lambda: fake_openai.requests_to("generations"))
    hub.stack.stop()
    hub.stack.start()

    done = ended(hub, key, job["id"])
    assert (done["status"], done["error"]["code"]) == ("failed", "job_interrupted")
    assert len(fake_openai.requests_to("generations")) == 1
    [delivery] = wait_for(lambda: receiver.deliveries("hooks/interrupted"))
    assert delivery.json["type"] == "image.job.failed"
    assert [(r["status"], r["images"]) for r in hub.records(key)] == [("JOB_INTERRUPTED", 0)]
    assert hub.get_key(key)["images_today"] == 0


def kill(stack: Stack) -> None:
    """SIGKILL the server (Envoy, its child, is told to stop when it dies); wait until the
    ports are free."""
    assert stack.process is not None
    os.kill(stack.process.pid, signal.SIGKILL)
    stack.process.wait()

    def envoy_gone() -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{stack.admin_port}/ready", timeout=0.5)
        except httpx.HTTPError:
            return True
        return False

    wait_for(envoy_gone, timeout=20)
