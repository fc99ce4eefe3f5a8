"""`output_mode=s3` (services/outputs/s3.py) against moto's S3 server as a real process, with boto3
speaking S3's HTTP API to it: single and multipart uploads, presigned URLs, create-only keys,
an answer lost after the object landed, connections cut in the middle of a multipart upload,
and the server killed there."""
import asyncio
import base64
import hashlib
import os
import re
import threading
import time
import urllib.request
import zlib

import pytest

from services.comfy.client import ComfyClient
from services.comfy.provider import FixedComfy
from services.config import Settings, SettingsError
from services.errors import AppError
from services.jobs.runner import JobRunner
from services.outputs.s3 import S3Destination, S3Target
from services.versions.spec import SpecStore
from tests import workflows
from tests.s3_server import CREDENTIALS, REGION, S3Server
from tests.tcp_proxy import TcpProxy

MiB = 2**20
CONTINUE = re.compile(rb"^(HTTP/1\.1 100 Continue\r\n\r\n)+")


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch):
    # boto3's standard chain reads the environment first; a developer's own profile stays out.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def server():
    s3 = S3Server().start()
    yield s3
    s3.stop()


def destination(endpoint: str, **env: str) -> S3Destination:
    return S3Destination(Settings.from_env({"S3_ENDPOINT_URL": endpoint, "S3_REGION": REGION, "S3_RETRIES": "3",
                                            "S3_RETRY_BASE_SLEEP": "0.05", **env}))


def spooled(tmp_path, size: int, name: str = "out.bin"):
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def deliver(dest: S3Destination, target: S3Target, path, job_id: str = "job-1", name: str = "out.bin",
            content_type: str = "application/octet-stream"):
    data = path.read_bytes()
    return asyncio.run(dest.deliver(target, job_id, name, path, len(data), hashlib.sha256(data).hexdigest(),
                                    content_type, {"appliance-version-id": "demo"}))


def stored(server: S3Server, url: str) -> dict:
    bucket, key = url.removeprefix("s3://").split("/", 1)
    return server.client().get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


class FaultyProxy(TcpProxy):
    """A TcpProxy that breaks uploads at a chosen point: once `cut_after` bytes in all went
    upstream it calls `on_cut` (severing every connection by default); with `lose_answer` it
    drops the connection in place of the first 2xx answer, so the request took effect but the
    client never hears of it (a delivery's first 2xx is its PUT's: the look-up before is a 404)."""

    def __init__(self, target_port: int, cut_after: int | None = None, on_cut=None, lose_answer: bool = False):
        super().__init__(target_port)
        self.cut_after = cut_after
        self.on_cut = on_cut or self.sever
        self.lose_answer = lose_answer
        self.sent = 0  # request bytes after each connection's first chunk (TcpProxy forwards that one)
        self.faults = 0
        self._count = threading.Lock()

    def _pass(self, data, src, dst):
        upstream_bound = dst.getpeername()[1] == self.target_port
        with self._count:
            if upstream_bound:
                self.sent += len(data)
                fault = self.cut_after is not None and self.sent > self.cut_after and not self.faults
            else:  # an answer: past any "100 Continue" lines, is it a 2xx?
                fault = self.lose_answer and CONTINUE.sub(b"", data).startswith(b"HTTP/1.1 2")
                self.lose_answer = self.lose_answer and not fault
            self.faults += fault
        if fault and upstream_bound:
            self.on_cut()
        return not fault


@pytest.mark.comfy
def test_a_job_delivers_its_outputs_to_s3(comfy, server):
    async def go():
        settings = Settings.from_env({"DEFAULT_VERSION_ID": "demo", "S3_ENDPOINT_URL": server.url,
                                      "S3_REGION": REGION, "S3_SIGNED_URL_TTL": "60"})
        client = ComfyClient(comfy.url)
        runner = JobRunner(settings, SpecStore(settings.versions_dir), FixedComfy(client))
        try:
            return await runner.run({"workflow": workflows.image(width=48, height=32), "output_mode": "s3",
                                     "s3_bucket": server.bucket})
        finally:
            await runner.close()
            await client.close()

    entry = (result := asyncio.run(go()))["outputs"][0]
    assert entry["s3_url"].startswith(f"s3://{server.bucket}/comfy/outputs/{result['job_id']}/")
    obj = stored(server, entry["s3_url"])
    data = obj["Body"].read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) == entry["size"] and obj["ContentType"] == "image/png"
    assert hashlib.sha256(data).hexdigest() == entry["sha256"] == obj["Metadata"]["sha256"]
    assert obj["Metadata"]["appliance-version-id"] == "demo" and obj["Metadata"]["appliance-workflow-sha256"]
    with urllib.request.urlopen(entry["signed_url"]) as resp:
        assert resp.read() == data


def test_small_output_is_stored_with_metadata_and_a_presigned_url(server, tmp_path):
    dest = destination(server.url, S3_SIGNED_URL_TTL="600")
    path = spooled(tmp_path, 200_000)
    target = dest.target({"s3_bucket": server.bucket, "s3_prefix": "/renders/"}, dest.settings)
    result = deliver(dest, target, path, content_type="image/png")
    assert result["s3_url"] == f"s3://{server.bucket}/renders/job-1/out.bin"
    obj = stored(server, result["s3_url"])
    data = obj["Body"].read()
    assert data == path.read_bytes() and obj["ContentType"] == "image/png"
    assert obj["Metadata"] == {"appliance-version-id": "demo", "sha256": hashlib.sha256(data).hexdigest()}
    assert obj["ChecksumCRC32"] == crc32_b64(data)
    signed = result["signed_url"]
    assert signed.startswith(f"{server.url}/{server.bucket}/renders/job-1/out.bin?") and "X-Amz-Expires=600" in signed
    with urllib.request.urlopen(signed) as resp:  # a plain GET, no credentials
        assert resp.read() == data


def test_a_big_output_goes_in_parts_with_a_whole_object_checksum(server, tmp_path):
    dest = destination(server.url, S3_MULTIPART_THRESHOLD=str(5 * MiB))
    path = spooled(tmp_path, 20 * MiB + 123)
    result = deliver(dest, dest.target({"s3_bucket": server.bucket}, dest.settings), path)
    obj = stored(server, result["s3_url"])
    data = obj["Body"].read()
    assert data == path.read_bytes()
    assert obj["ETag"].endswith('-3"')  # 8 + 8 + 4 MiB parts
    assert (obj["ChecksumType"], obj["ChecksumCRC32"]) == ("FULL_OBJECT", crc32_b64(data))
    assert not server.client().list_multipart_uploads(Bucket=server.bucket).get("Uploads")


def test_keys_are_create_only(server, tmp_path):
    dest = destination(server.url)
    target = dest.target({"s3_bucket": server.bucket, "s3_prefix": "create-only"}, dest.settings)
    path = spooled(tmp_path, 10_000)
    first = deliver(dest, target, path)
    # The same file again (a retried job, a worker that died after uploading): already done.
    assert deliver(dest, target, path) == first
    other = spooled(tmp_path, 10_000, "other.bin")
    with pytest.raises(AppError) as err:
        deliver(dest, target, other)
    assert err.value.code == "s3_upload_failed:exists"
    assert stored(server, first["s3_url"])["Body"].read() == path.read_bytes()
    # The upload itself is conditional too (If-None-Match: *), for a writer that slips in
    # between the look-up and the upload: the server refuses to replace the object.
    with pytest.raises(Exception) as refused:
        dest._s3().put_object(Bucket=server.bucket, Key=first["s3_url"].split("/", 3)[3], Body=b"other")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


def test_an_answer_lost_after_the_object_landed_counts_as_done(server, tmp_path):
    proxy = FaultyProxy(server.port, lose_answer=True)
    try:
        dest = destination(proxy.url)
        path = spooled(tmp_path, 50_000)
        result = deliver(dest, dest.target({"s3_bucket": server.bucket, "s3_prefix": "lost"}, dest.settings), path)
    finally:
        proxy.close()
    assert proxy.faults == 1  # the PUT landed, its 200 never reached the client
    assert stored(server, result["s3_url"])["Body"].read() == path.read_bytes()


def test_connections_cut_mid_multipart_are_retried_to_a_whole_object(server, tmp_path):
    proxy = FaultyProxy(server.port, cut_after=12 * MiB)
    try:
        dest = destination(proxy.url, S3_MULTIPART_THRESHOLD=str(5 * MiB))
        path = spooled(tmp_path, 24 * MiB)
        result = deliver(dest, dest.target({"s3_bucket": server.bucket, "s3_prefix": "cut"}, dest.settings), path)
    finally:
        proxy.close()
    assert proxy.faults == 1 and proxy.sent > 24 * MiB  # the parts went up again after the cut
    obj = stored(server, result["s3_url"])
    assert obj["Body"].read() == path.read_bytes()
    # The interrupted multipart upload was aborted, not left behind.
    assert not server.client().list_multipart_uploads(Bucket=server.bucket).get("Uploads")


def test_server_killed_mid_multipart_is_a_typed_failure_then_recovery(tmp_path):
    s3 = S3Server().start()
    back = S3Server(port=s3.port)
    proxy = FaultyProxy(s3.port, cut_after=6 * MiB, on_cut=s3.stop)
    path = spooled(tmp_path, 16 * MiB)
    try:
        dest = destination(proxy.url, S3_MULTIPART_THRESHOLD=str(5 * MiB))
        target = dest.target({"s3_bucket": s3.bucket}, dest.settings)
        started = time.monotonic()
        with pytest.raises(AppError) as err:
            deliver(dest, target, path)
        assert err.value.code == "s3_upload_failed:unreachable" and time.monotonic() - started < 15
        back.start()  # it comes back on the same port (empty: moto keeps objects in memory)
        result = deliver(dest, target, path)
        assert stored(back, result["s3_url"])["Body"].read() == path.read_bytes()
    finally:
        proxy.close()
        s3.stop()
        back.stop()


def test_an_unknown_bucket_is_a_typed_failure(server, tmp_path):
    dest = destination(server.url)
    with pytest.raises(AppError) as err:
        deliver(dest, dest.target({"s3_bucket": "no-such-bucket"}, dest.settings), spooled(tmp_path, 10))
    assert (err.value.code, err.value.status) == ("s3_upload_failed:bucket_not_found", 502)


@pytest.mark.parametrize("payload, code", [
    ({"s3_bucket": "Upper"}, "invalid_payload:s3_bucket"),
    ({"s3_bucket": "a_b"}, "invalid_payload:s3_bucket"),
    ({"s3_bucket": "ab"}, "invalid_payload:s3_bucket"),
    ({"s3_bucket": "a..b"}, "invalid_payload:s3_bucket"),
    ({"s3_bucket": "192.168.1.1"}, "invalid_payload:s3_bucket"),
    ({"s3_bucket": "xn--bucket"}, "invalid_payload:s3_bucket"),
    ({"s3_bucket": "bucket-s3alias"}, "invalid_payload:s3_bucket"),
    ({"s3_bucket": 7}, "invalid_payload:s3_bucket"),
    ({"s3_bucket": "ok-bucket", "s3_prefix": "a/../b"}, "invalid_payload:s3_prefix"),
    ({"s3_bucket": "ok-bucket", "s3_prefix": "a//b"}, "invalid_payload:s3_prefix"),
    ({"s3_bucket": "ok-bucket", "s3_prefix": "a\nb"}, "invalid_payload:s3_prefix"),
    ({"s3_bucket": "ok-bucket", "s3_prefix": "\ud800"}, "invalid_payload:s3_prefix"),
    ({"s3_bucket": "ok-bucket", "s3_prefix": "p" * 513}, "invalid_payload:s3_prefix"),
    ({}, "s3_bucket_required"),
    ({"s3_bucket": "other-bucket"}, "s3_bucket_not_allowed:other-bucket"),
])
def test_bad_targets_are_refused_before_any_upload(payload, code):
    settings = Settings.from_env({"S3_ALLOWED_BUCKETS": "ok-bucket, another"})
    with pytest.raises(AppError) as err:
        S3Destination(settings).target(payload, settings)
    assert err.value.code == code and 400 <= err.value.status < 500


def test_settings_defaults_and_checks():
    settings = Settings.from_env({"S3_BUCKET": "ok-bucket"})
    dest = S3Destination(settings)
    assert dest.configured(settings) and not dest.configured(Settings.from_env({}))
    assert dest.target({}, settings) == S3Target("ok-bucket", "comfy/outputs")
    for env in ({"S3_BUCKET": "Bad_Bucket"}, {"S3_ALLOWED_BUCKETS": "ok-bucket x"},
                {"S3_SIGNED_URL_TTL": "604801"}, {"S3_MULTIPART_THRESHOLD": "1024"}):
        with pytest.raises(SettingsError):
            Settings.from_env(env)
