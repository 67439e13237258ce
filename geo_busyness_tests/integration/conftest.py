"""Fixtures for integration tests against real local services.

* ``seaweedfs`` (session): a running :class:`~geo_busyness.stack.services.SeaweedFS` S3 server
  on loopback. A missing ``weed`` binary or a server that does not come up FAILS the tests
  (never skips them): the integration suite must prove S3 works.
* ``moto_server`` (module): moto's AWS APIs (S3, SageMaker, ECS, …) on 127.0.0.1, a free port;
  only for the AWS control planes that cannot run here.
* ``s3_env`` (function): AWS variables pointing at that server set for the test (credentials,
  ``us-east-1``, no EC2 metadata lookups) and a fresh bucket of its own, as an :class:`S3Bucket`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from geo_busyness.stack.services import SeaweedFS, SeaweedFSError, free_port

# A throw-away server: no need to wait for the filer's ~15 s graceful gRPC shutdown.
STOP_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the test server; ``url("a/b")`` is ``s3://<name>/a/b``."""

    name: str
    server: SeaweedFS

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    def url(self, path: str = "") -> str:
        return f"s3://{self.name}/{path.lstrip('/')}".rstrip("/")

    def client(self):
        return self.server.client()

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``, sorted."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), stop_timeout=STOP_TIMEOUT_SECONDS)
    try:
        server.start()
    except SeaweedFSError as error:
        pytest.fail(f"SeaweedFS S3 server unavailable: {error}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    for name, value in seaweedfs.env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    bucket = seaweedfs.make_bucket(f"test-{uuid.uuid4().hex[:16]}")
    return S3Bucket(name=bucket, server=seaweedfs)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    """The URL of a ``moto.server.ThreadedMotoServer`` on 127.0.0.1, stopped after the module."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
