"""`output_mode=gcs` against gcp-storage-emulator with Google's own client: uploads, signed URLs,
an outage caused by killing the emulator, and 503s injected by a real proxy."""
import asyncio
import hashlib
import io
import json
import threading
import time
import urllib.request

import pytest
from PIL import Image

from services.comfy.client import ComfyClient
from services.config import Settings
from services.errors import AppError
from services.comfy.provider import FixedComfy
from services.jobs.runner import JobRunner
from services.versions.spec import SpecStore
from tests import workflows
from tests.gcs_emulator import Emulator
from tests.http_server import LocalServer, send

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def emulator():
    emu = Emulator().start()
    yield emu
    emu.stop()


def run_job(comfy_url, payload, env):
    async def go():
        settings = Settings.from_env({"DEFAULT_VERSION_ID": "demo", "GCS_RETRIES": "3",
                                      "GCS_RETRY_BASE_SLEEP": "0.1", **env})
        client = ComfyClient(comfy_url)
        runner = JobRunner(settings, SpecStore(settings.versions_dir), FixedComfy(client))
        try:
            return await runner.run(payload)
        finally:
            await runner.close()
            await client.close()
    return asyncio.run(go())


def test_outputs_are_uploaded_and_the_url_returned(comfy, emulator):
    result = run_job(comfy.url, {"workflow": workflows.image(width=48, height=32), "output_mode": "gcs",
                                 "gcs_bucket": emulator.bucket, "gcs_prefix": "/renders/"},
                     {"STORAGE_EMULATOR_HOST": emulator.url, "GCS_PUBLIC": "1"})
    url = result["gcs_url"]
    assert url.startswith(f"gs://{emulator.bucket}/renders/{result['job_id']}/") and "base64" not in result
    assert result["outputs"][0]["public_url"].endswith(url.split("/", 3)[3])
    blob = emulator.client().bucket(emulator.bucket).blob(url.split("/", 3)[3])
    data = blob.download_as_bytes()
    assert Image.open(io.BytesIO(data)).size == (48, 32)
    assert hashlib.sha256(data).hexdigest() == result["outputs"][0]["sha256"]
    assert blob.content_type == "image/png"


def test_signed_url_with_a_service_account_key(comfy, emulator, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    creds = tmp_path / "sa.json"
    creds.write_text(json.dumps({"type": "service_account", "project_id": "test", "private_key_id": "k1",
                                 "private_key": pem, "client_email": "ci@test.iam.gserviceaccount.com",
                                 "client_id": "1", "token_uri": "http://127.0.0.1:9/token"}))
    # Uploads stay anonymous (the emulator checks no token); only signing uses the key.
    result = run_job(comfy.url, {"workflow": workflows.image(color=5), "output_mode": "gcs",
                                 "gcs_bucket": emulator.bucket},
                     {"STORAGE_EMULATOR_HOST": emulator.url, "GCS_SIGNED_URL_TTL": "900",
                      "GOOGLE_APPLICATION_CREDENTIALS": str(creds)})
    signed = result["outputs"][0]["signed_url"]
    assert signed.startswith(emulator.url) and "X-Goog-Signature=" in signed and "X-Goog-Expires=900" in signed
    with urllib.request.urlopen(signed) as resp:
        assert resp.read()[:8] == b"\x89PNG\r\n\x1a\n"


def test_signing_without_a_key_is_a_clear_error(comfy, emulator):
    with pytest.raises(AppError) as err:
        run_job(comfy.url, {"workflow": workflows.image(color=6), "output_mode": "gcs", "gcs_bucket": emulator.bucket},
                {"STORAGE_EMULATOR_HOST": emulator.url, "GCS_SIGNED_URL_TTL": "60"})
    assert err.value.code == "gcs_upload_failed:signing" and err.value.extra["gcs_url"].startswith("gs://")


def test_unknown_bucket(comfy, emulator):
    with pytest.raises(AppError) as err:
        run_job(comfy.url, {"workflow": workflows.image(color=7), "output_mode": "gcs", "gcs_bucket": "nope"},
                {"STORAGE_EMULATOR_HOST": emulator.url})
    assert err.value.code == "gcs_upload_failed:bucket_not_found"


def test_outage_fails_the_job_then_recovery(comfy, tmp_path):
    emu = Emulator().start()
    back = Emulator(port=emu.port)
    env = {"STORAGE_EMULATOR_HOST": emu.url}
    payload = {"workflow": workflows.image(color=8), "output_mode": "gcs", "gcs_bucket": emu.bucket}
    try:
        run_job(comfy.url, payload, env)
        emu.stop()  # GCS goes away
        started = time.monotonic()
        with pytest.raises(AppError) as err:
            run_job(comfy.url, dict(payload, workflow=workflows.image(color=9)), env)
        assert err.value.code == "gcs_upload_failed:unreachable" and time.monotonic() - started < 10
        back.start()  # it comes back (empty, in memory)
        assert run_job(comfy.url, dict(payload, workflow=workflows.image(color=10)), env)["gcs_url"]
    finally:
        emu.stop()
        back.stop()


def test_transient_503s_are_retried(comfy, emulator):
    failures = {"left": 2}
    lock = threading.Lock()

    def flaky(req):
        with lock:
            if req.command == "POST" and failures["left"] > 0:
                failures["left"] -= 1
                send(req, 503, b"try later")
                return
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0)) if req.command == "POST" else None
        upstream = urllib.request.Request(emulator.url + req.path, data=body, method=req.command,
                                          headers={k: v for k, v in req.headers.items() if k.lower() != "host"})
        try:
            with urllib.request.urlopen(upstream) as resp:
                send(req, resp.status, resp.read(), resp.headers.get("Content-Type", "application/json"))
        except urllib.error.HTTPError as exc:
            send(req, exc.code, exc.read(), "application/json")

    with LocalServer() as proxy:
        proxy.route(f"/upload/storage/v1/b/{emulator.bucket}/o", flaky)
        proxy.route(f"/storage/v1/b/{emulator.bucket}", flaky)
        result = run_job(comfy.url, {"workflow": workflows.image(color=11), "output_mode": "gcs",
                                     "gcs_bucket": emulator.bucket}, {"STORAGE_EMULATOR_HOST": proxy.url})
    assert failures["left"] == 0 and result["gcs_url"]
    data = emulator.client().bucket(emulator.bucket).blob(result["gcs_url"].split("/", 3)[3]).download_as_bytes()
    assert hashlib.sha256(data).hexdigest() == result["outputs"][0]["sha256"]


def test_only_allowed_buckets_are_written(comfy, emulator):
    env = {"STORAGE_EMULATOR_HOST": emulator.url, "GCS_ALLOWED_BUCKETS": emulator.bucket}
    result = run_job(comfy.url, {"workflow": workflows.image(width=8, height=8), "output_mode": "gcs",
                                 "gcs_bucket": emulator.bucket}, env)
    assert result["gcs_url"].startswith(f"gs://{emulator.bucket}/")
    with pytest.raises(AppError) as err:  # refused while validating: ComfyUI never ran it
        run_job("http://127.0.0.1:9", {"workflow": workflows.image(), "output_mode": "gcs",
                                       "gcs_bucket": "other-bucket"}, env)
    assert (err.value.code, err.value.status) == ("gcs_bucket_not_allowed:other-bucket", 403)


def test_a_name_the_library_refuses_is_a_typed_failure_not_a_500(tmp_path):
    """The backstop behind services/outputs/gcs_names.py: the library's own ValueError."""
    from services.outputs.gcs import GcsDestination, GcsTarget

    destination = GcsDestination(Settings.from_env({"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9", "GCS_VALIDATE": "0"}))
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(AppError) as err:
        destination._deliver(GcsTarget("-bad-", "p"), "job", "a.png", tmp_path / "a.png", "image/png", {})
    assert err.value.code == "gcs_upload_failed:rejected"
