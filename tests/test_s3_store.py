"""The S3-compatible image store, against a real S3 API on 127.0.0.1 (moto's server mode):
both doors, `url` and `b64_json`, the service's own signed URLs and the bucket's presigned
ones, expiry, the retention sweep and the bucket's lifecycle rule, a URL served by another
server process that shares only the bucket, the database and the secrets."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock
from urllib.parse import parse_qsl, urlsplit

import grpc
import httpx
import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from aigne.hub.v1 import image_service_pb2 as pb
from aigne.hub.v1 import image_service_pb2_grpc as pb_grpc
from tests.conftest import GRPC_AUTH, GRPC_OPTIONS, open_image, openai_client
from tests.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server
from tests.stack import ROOT, Stack, free_port

PREFIX = "hub/images/"
TTL = 5
RETENTION = 8
KEY_HASH_SECRET = "test-key-hash-secret-shared-by-replicas"
SIGNED = {"AIGNE_HUB_S3_PREFIX": PREFIX, "AIGNE_HUB_URL_TTL_SECONDS": str(TTL),
          "AIGNE_HUB_IMAGE_RETENTION_SECONDS": str(RETENTION),
          "AIGNE_HUB_IMAGE_SWEEP_INTERVAL_SECONDS": "1",
          "AIGNE_HUB_KEY_HASH_SECRET": KEY_HASH_SECRET}
FOREIGN = {f"{PREFIX}notes.txt": b"not ours", "elsewhere/img_" + "B" * 24 + ".png": b"not ours"}
OTHER_RULE = {"ID": "someone-else", "Filter": {"Prefix": "logs/"}, "Status": "Enabled",
              "Expiration": {"Days": 30}}


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture(scope="module")
def signed_bucket(s3: S3Server) -> str:
    """A bucket with someone else's objects and lifecycle rule in it already."""
    bucket = s3.create_bucket()
    client = s3.client()
    for key, body in FOREIGN.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [OTHER_RULE]})
    return bucket


@pytest.fixture(scope="module")
def signed_stack(tmp_path_factory: pytest.TempPathFactory, s3: S3Server,
                 signed_bucket: str) -> Iterator[Stack]:
    """Images in S3; `url` answers are the service's own signed URLs."""
    with Stack(tmp_path_factory.mktemp("s3-signed"), s3.env(signed_bucket, **SIGNED)) as stack:
        yield stack


@pytest.fixture(scope="module")
def presigned_stack(tmp_path_factory: pytest.TempPathFactory,
                    s3: S3Server) -> Iterator[tuple[Stack, str]]:
    """`url` answers are the bucket's presigned URLs, for an endpoint named differently
    from the one the servers use (as a public endpoint would be)."""
    bucket = s3.create_bucket()
    env = s3.env(bucket, AIGNE_HUB_IMAGE_URLS="presigned", AIGNE_HUB_URL_TTL_SECONDS=str(TTL),
                 AIGNE_HUB_S3_PRESIGN_ENDPOINT_URL=f"http://localhost:{s3.port}")
    with Stack(tmp_path_factory.mktemp("s3-presigned"), env) as stack:
        yield stack, bucket


def _stored(s3: S3Server, bucket: str) -> dict[str, bytes]:
    """Our images in the bucket, by image name."""
    return {key[len(PREFIX):]: body for key, body in s3.keys(bucket, PREFIX).items()
            if key[len(PREFIX):].startswith("img_")}


def _name(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1]


def test_url_answers_are_served_from_the_bucket(signed_stack: Stack, s3: S3Server,
                                                signed_bucket: str) -> None:
    with openai_client(signed_stack) as client:
        result = client.images.generate(model="local", prompt="a bucket", size="64x48", n=2,
                                        response_format="url")
    stored = _stored(s3, signed_bucket)
    for image in result.data:
        assert image.url and image.url.startswith(f"{signed_stack.base_url}/api/images/files/")
        answer = httpx.get(image.url)  # no key: the signature is the capability
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "image/png"
        assert answer.content == stored[_name(image.url)]
        assert open_image(answer.content).size == (64, 48)


def test_b64_json_answers_are_not_stored(signed_stack: Stack, s3: S3Server,
                                         signed_bucket: str) -> None:
    before = set(_stored(s3, signed_bucket))
    with openai_client(signed_stack) as client:
        result = client.images.generate(model="local", prompt="inline", size="32x32",
                                        response_format="b64_json")
    assert open_image(base64.b64decode(result.data[0].b64_json or "")).size == (32, 32)
    assert set(_stored(s3, signed_bucket)) - before == set()


@pytest.mark.parametrize("door", ["envoy", "server"])
def test_grpc_door_url_and_bytes(signed_stack: Stack, s3: S3Server, signed_bucket: str,
                                 door: str) -> None:
    target = signed_stack.envoy_target if door == "envoy" else signed_stack.server_target
    with grpc.insecure_channel(target, options=GRPC_OPTIONS) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        as_url = stub.Generate(pb.GenerateRequest(prompt="grpc", model="local", size="40x40",
                                                  response_format="url"),
                               metadata=GRPC_AUTH, timeout=60)
        as_bytes = stub.Generate(pb.GenerateRequest(prompt="grpc", model="local",
                                                    size="40x40", response_format="b64_json"),
                                 metadata=GRPC_AUTH, timeout=60)
    url = as_url.data[0].url
    assert httpx.get(url).content == _stored(s3, signed_bucket)[_name(url)]
    assert open_image(as_bytes.data[0].b64_json).size == (40, 40)


def test_signed_url_expires_after_the_ttl(signed_stack: Stack) -> None:
    with openai_client(signed_stack) as client:
        url = client.images.generate(model="local", prompt="brief", size="16x16",
                                     response_format="url").data[0].url or ""
    expires = int(dict(parse_qsl(urlsplit(url).query))["expires"])
    assert expires - TTL - 2 <= time.time() <= expires - TTL + 4
    assert httpx.get(url).status_code == 200
    time.sleep(max(0.0, expires - time.time()) + 0.2)
    answer = httpx.get(url)
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "url_expired"


def test_retention_sweep_deletes_old_images_and_nothing_else(
        signed_stack: Stack, s3: S3Server, signed_bucket: str) -> None:
    with openai_client(signed_stack) as client:
        url = client.images.generate(model="local", prompt="short-lived", size="16x16",
                                     response_format="url").data[0].url or ""
    name = _name(url)
    assert name in _stored(s3, signed_bucket)
    deadline = time.monotonic() + RETENTION + 15
    while name in _stored(s3, signed_bucket):
        assert time.monotonic() < deadline, "the sweep did not delete the image"
        time.sleep(0.5)
    everything = s3.keys(signed_bucket)
    assert {key: everything.get(key) for key in FOREIGN} == FOREIGN
    assert f"{PREFIX}.ready" in everything  # the readiness probe's object is not an image


def test_lifecycle_rule_is_set_beside_other_rules(signed_stack: Stack, s3: S3Server,
                                                  signed_bucket: str) -> None:
    rules = s3.client().get_bucket_lifecycle_configuration(Bucket=signed_bucket)["Rules"]
    by_id = {rule["ID"]: rule for rule in rules}
    assert by_id["someone-else"] == OTHER_RULE
    ours = by_id[f"aigne-hub-retention:{PREFIX}"]
    assert ours["Filter"] == {"Prefix": PREFIX} and ours["Status"] == "Enabled"
    assert ours["Expiration"] == {"Days": 1}  # 8 seconds, in S3's unit: whole days, rounded up


def test_url_made_by_one_server_is_served_by_another(
        signed_stack: Stack, s3: S3Server, signed_bucket: str, tmp_path: Path) -> None:
    """A second server process with a var/ of its own (as on another machine) shares only the
    bucket, the database and the secrets: it serves the URL the first one made."""
    port = free_port()
    env = {**signed_stack.env, "AIGNE_HUB_VAR_DIR": str(tmp_path / "other-machine"),
           "AIGNE_HUB_GRPC_PORT": str(port), "AIGNE_HUB_METRICS_PORT": "0",
           "AIGNE_HUB_DATABASE_URL": f"sqlite+aiosqlite:///{signed_stack.var_dir / 'hub.db'}"}
    with (tmp_path / "replica.log").open("wb") as log:
        replica = subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=ROOT,
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            with openai_client(signed_stack) as client:
                url = client.images.generate(model="local", prompt="shared", size="24x24",
                                             response_format="url").data[0].url or ""
            query = dict(parse_qsl(urlsplit(url).query))
            stub = pb_grpc.ImageServiceStub(channel)
            image = stub.GetImage(pb.GetImageRequest(
                name=_name(url), expires=int(query["expires"]), signature=query["signature"]),
                timeout=30)
            generated = stub.Generate(pb.GenerateRequest(prompt="key works here too",
                                                         model="local", size="16x16"),
                                      metadata=GRPC_AUTH, timeout=60)
    finally:
        replica.terminate()
        replica.wait(timeout=40)
    assert image.content_type == "image/png"
    assert image.data == _stored(s3, signed_bucket)[_name(url)]
    assert httpx.get(generated.data[0].url).status_code == 200  # and back through the first


def test_presigned_url_is_the_buckets_own(presigned_stack: tuple[Stack, str],
                                          s3: S3Server) -> None:
    stack, bucket = presigned_stack
    with openai_client(stack) as client:
        result = client.images.generate(model="local", prompt="direct", size="32x16", n=2,
                                        response_format="url")
    stored = {key[len("images/"):]: body for key, body in s3.keys(bucket, "images/").items()}
    for image in result.data:
        url = image.url or ""
        assert url.startswith(f"http://localhost:{s3.port}/{bucket}/images/img_")
        answer = httpx.get(url)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "image/png"
        assert answer.content == stored[_name(url)]
        assert open_image(answer.content).size == (32, 16)


def test_presigned_url_expires_after_the_ttl(presigned_stack: tuple[Stack, str]) -> None:
    """S3 refuses a presigned URL once X-Amz-Date + X-Amz-Expires has passed, and the
    signature covers both (moto does not check either, so the test checks the signature)."""
    stack, _ = presigned_stack
    with grpc.insecure_channel(stack.envoy_target) as channel:
        reply = pb_grpc.ImageServiceStub(channel).Generate(
            pb.GenerateRequest(prompt="direct", model="local", size="16x16"),
            metadata=GRPC_AUTH, timeout=60)
    url = reply.data[0].url
    query = dict(parse_qsl(urlsplit(url).query))
    signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs(signed_at.timestamp() - time.time()) < 10
    assert query["X-Amz-Expires"] == str(TTL)
    assert query["X-Amz-Credential"].startswith(f"{ACCESS_KEY}/")
    assert query["X-Amz-Signature"] == _sigv4_signature(url, signed_at, TTL)
    assert query["X-Amz-Signature"] != _sigv4_signature(url, signed_at, TTL + 3600)


def test_presigned_urls_need_the_s3_store(tmp_path: Path) -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "service", "envoy-config"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "AIGNE_HUB_IMAGE_URLS": "presigned",
                                    "AIGNE_HUB_VAR_DIR": str(tmp_path)})
    assert answer.returncode != 0
    assert "AIGNE_HUB_IMAGE_URLS=presigned needs AIGNE_HUB_IMAGE_STORE=s3" in answer.stderr


def test_missing_bucket_stops_the_server_at_start(s3: S3Server, tmp_path: Path) -> None:
    env = {**Stack(tmp_path).env, **s3.env("no-such-bucket"),
           "AIGNE_HUB_GRPC_PORT": str(free_port())}
    answer = subprocess.run([sys.executable, "-m", "service", "serve"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert answer.returncode != 0
    assert "bucket 'no-such-bucket' cannot be written" in answer.stderr
    assert SECRET_KEY not in answer.stderr


def _sigv4_signature(url: str, signed_at: datetime, expires: int) -> str:
    """The SigV4 query signature of a GET of `url` made at `signed_at`, valid `expires` s."""
    parts = urlsplit(url)
    request = AWSRequest(method="GET", url=f"{parts.scheme}://{parts.netloc}{parts.path}")
    auth = S3SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION, expires=expires)
    with mock.patch("botocore.auth.get_current_datetime", return_value=signed_at):
        auth.add_auth(request)
    return dict(parse_qsl(urlsplit(request.url).query))["X-Amz-Signature"]

