"""A real S3 API on 127.0.0.1 for tests: moto's server mode, in a thread of the test process,
on a free port; a bucket per user; stopped at the end."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCESS_KEY = "AKIDTESTHUB0000000000"
SECRET_KEY = "test-secret-access-key-0123456789abcdef"


class S3Server:
    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def start(self) -> S3Server:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per S3 call
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def create_bucket(self) -> str:
        name = f"hub-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, **settings: str) -> dict[str, str]:
        """The stack's settings for an S3 image store in `bucket`."""
        return {"AIGNE_HUB_IMAGE_STORE": "s3", "AIGNE_HUB_S3_BUCKET": bucket,
                "AIGNE_HUB_S3_ENDPOINT_URL": self.url, "AIGNE_HUB_S3_REGION": REGION,
                "AIGNE_HUB_S3_ACCESS_KEY_ID": ACCESS_KEY,
                "AIGNE_HUB_S3_SECRET_ACCESS_KEY": SECRET_KEY, **settings}

    def keys(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under `prefix`, by key. An object listed but deleted before it is
        read (a retention sweep running meanwhile) is left out, as a later listing would."""
        client = self.client()
        listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        objects = {}
        for item in listing:
            try:
                answer = client.get_object(Bucket=bucket, Key=item["Key"])
            except client.exceptions.NoSuchKey:
                continue
            objects[item["Key"]] = answer["Body"].read()
        return objects

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
