"""Output destinations (services/outputs/): the registry drives the payload parser, OUTPUT_MODE,
the CLI, the OpenAPI schema and README; `auto` splits a job's outputs between inline and a
bucket (gcp-storage-emulator), or keeps what fits nowhere; `base64` has a hard cap; per-job
buckets obey the allowlist and per-job credentials travel only sealed."""
import argparse
import asyncio
import base64
import hashlib
import json
from pathlib import Path

import pytest
from nacl.public import PrivateKey

from services.comfy.client import ComfyClient
from services.comfy.provider import FixedComfy
from services.config import Settings
from services.errors import AppError
from services.jobs.request import parse_request
from services.jobs.runner import JobRunner
from services.outputs import registry
from services.versions.spec import SpecStore
from tests.gcs_emulator import Emulator

VIDEO_SIDE = 3200  # one 3200x3200 RGB frame, stored uncompressed: a 30.7 MB animated PNG


def big_and_small(side: int = VIDEO_SIDE) -> dict:
    """A large animated output (SaveAnimatedPNG, compress_level 0: ComfyUI's own node writes
    raw deflate blocks, so size ~ width * height * 3) beside a small still."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": side, "height": side, "batch_size": 1,
                                                         "color": 0x204060}},
            "2": {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["1", 0], "filename_prefix": "video",
                                                              "fps": 6.0, "compress_level": 0}},
            "3": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 32, "batch_size": 1, "color": 0}},
            "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "still"}}}


def run_job(comfy_url: str, payload: dict, env: dict, encrypted: bool = False) -> dict:
    async def go():
        settings = Settings.from_env({"DEFAULT_VERSION_ID": "demo", **env})
        client = ComfyClient(comfy_url)
        runner = JobRunner(settings, SpecStore(settings.versions_dir), FixedComfy(client))
        try:
            return await runner.run(payload, encrypted=encrypted)
        finally:
            await runner.close()
            await client.close()
    return asyncio.run(go())


def by_prefix(result: dict, prefix: str) -> dict:
    return next(o for o in result["outputs"] if o.get("filename", "").startswith(prefix))


def service_account_key(marker: str) -> dict:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "test", "private_key_id": marker, "private_key": pem,
            "client_email": f"{marker}@test.iam.gserviceaccount.com", "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token"}


# ---- the registry drives everything ---------------------------------------------------
class FakeDestination:
    name = "fake"
    doc = "A destination the test adds."
    payload_fields = ("fake_bucket", "fake_token")
    secret_fields = ("fake_token",)
    result_fields = ("fake_url",)
    settings = ("FAKE_BUCKET",)

    def __init__(self, settings):
        self.settings = settings

    def configured(self, settings) -> bool:
        return False

    def target(self, payload: dict, settings) -> str:
        return payload.get("fake_bucket") or "default-fake"

    async def deliver(self, target, job_id, name, path, size, sha256, content_type, metadata):
        return {"fake_url": f"fake://{target}/{job_id}/{name}"}


def test_a_destination_added_to_the_registry_shows_up_everywhere(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    import sync_readme_tables
    from services.api.openapi import document
    from services.cli import add_run_parser

    monkeypatch.setattr(registry, "DESTINATIONS", [*registry.DESTINATIONS, FakeDestination])
    settings = Settings.from_env({"OUTPUT_MODE": "fake", "DEFAULT_VERSION_ID": "demo"})
    assert settings.output_mode == "fake"

    request = parse_request({"workflow": {}, "fake_bucket": "mine"}, settings)
    assert (request.output_mode, request.destination, request.target) == ("fake", "fake", "mine")
    with pytest.raises(AppError) as err:
        parse_request({"workflow": {}, "fake_token": "s3cr3t"}, settings)
    assert err.value.code == "credentials_need_encryption:fake_token" and "s3cr3t" not in json.dumps(err.value.as_dict())
    assert parse_request({"workflow": {}, "fake_token": "s3cr3t"}, settings, encrypted=True).destination == "fake"
    # auto picks the destination whose fields the job names
    assert parse_request({"workflow": {}, "output_mode": "auto", "fake_bucket": "b"}, settings).destination == "fake"

    parser = argparse.ArgumentParser()
    add_run_parser(parser.add_subparsers())
    args = parser.parse_args(["run", "--workflow", "w.json", "--output", "fake", "--fake-bucket", "b"])
    assert (args.output_mode, args.fake_bucket) == ("fake", "b")
    with pytest.raises(SystemExit):  # credentials never on a command line
        parser.parse_args(["run", "--workflow", "w.json", "--fake-token", "x"])

    schemas = document()["components"]["schemas"]
    assert "fake" in schemas["RunRequest"]["properties"]["output_mode"]["enum"]
    assert {"fake_bucket", "fake_token"} <= set(schemas["RunRequest"]["properties"])
    assert "fake_url" in schemas["Output"]["properties"] and "fake_url" in schemas["RunResult"]["properties"]

    readme = sync_readme_tables.render(sync_readme_tables.README.read_text())
    row = next(line for line in readme.splitlines() if line.startswith("| `fake` |"))
    assert "`fake_token` (encrypted payload only)" in row and "`FAKE_BUCKET`" in row and "`fake_url`" in row


def test_bad_modes_and_buckets_are_refused_before_anything_runs():
    settings = Settings.from_env({"DEFAULT_VERSION_ID": "demo", "GCS_ALLOWED_BUCKETS": "ci-outputs"})
    for payload, code in [({"output_mode": "ftp"}, "invalid_output_mode"),
                          ({"output_mode": "auto", "gcs_bucket": "other-bucket"}, "gcs_bucket_not_allowed:other-bucket"),
                          ({"output_mode": "gcs"}, "gcs_bucket_required"),
                          ({"output_mode": "gcs", "gcs_credentials": {"type": "service_account"}},
                           "credentials_need_encryption:gcs_credentials")]:
        with pytest.raises(AppError) as err:
            parse_request({"workflow": {}, **payload}, settings)
        assert err.value.code == code, payload
    with pytest.raises(AppError) as err:  # sealed, but not a key: a 400 that quotes nothing of it
        parse_request({"workflow": {}, "gcs_bucket": "ci-outputs", "gcs_credentials": {"private_key": "SECRET"}},
                      settings, encrypted=True)
    assert err.value.code == "invalid_payload:gcs_credentials" and "SECRET" not in err.value.detail
    key = service_account_key("sealed-key")
    request = parse_request({"workflow": {}, "gcs_bucket": "ci-outputs", "gcs_credentials": key}, settings,
                            encrypted=True)
    assert request.target.credentials == key and "PRIVATE KEY" not in repr(request)


# ---- auto, base64 and kept files against real processes -------------------------------
@pytest.mark.comfy
def test_auto_sends_the_video_to_the_bucket_and_keeps_the_still_inline(comfy, tmp_path):
    emulator = Emulator().start()
    try:
        result = run_job(comfy.url, {"workflow": big_and_small()},
                         {"GCS_BUCKET": emulator.bucket, "STORAGE_EMULATOR_HOST": emulator.url,
                          "OUTPUT_KEEP_DIR": str(tmp_path / "kept")})
        video, still = by_prefix(result, "video"), by_prefix(result, "still")
        assert video["size"] > 30_000_000 and "base64" not in video
        assert video["gcs_url"].startswith(f"gs://{emulator.bucket}/comfy/outputs/{result['job_id']}/")
        blob = emulator.client().bucket(emulator.bucket).blob(video["gcs_url"].split("/", 3)[3])
        assert hashlib.sha256(blob.download_as_bytes()).hexdigest() == video["sha256"]
        blob.reload()  # the job's provenance rides along as object metadata
        assert blob.metadata["appliance-version-id"] == "demo" and blob.content_type == "image/png"
        assert "gcs_url" not in still and hashlib.sha256(base64.b64decode(still["base64"])).hexdigest() == still["sha256"]
        assert [p for p in (tmp_path / "kept").rglob("*") if p.is_file()] == []  # spool emptied, nothing kept
    finally:
        emulator.stop()


@pytest.mark.comfy
def test_a_sealed_jobs_own_key_signs_its_urls(comfy, tmp_path):
    """The key of an (opened) encrypted payload serves that job only: its URL is signed by it."""
    emulator = Emulator().start()
    try:
        key = service_account_key("job-own-key")
        result = run_job(comfy.url, {"workflow": big_and_small(side=8), "output_mode": "gcs",
                                     "gcs_bucket": emulator.bucket, "gcs_credentials": key},
                         {"STORAGE_EMULATOR_HOST": emulator.url, "GCS_SIGNED_URL_TTL": "60",
                          "OUTPUT_KEEP_DIR": str(tmp_path / "kept")}, encrypted=True)
        assert all("job-own-key%40test.iam.gserviceaccount.com" in o["signed_url"] for o in result["outputs"])
        assert "PRIVATE KEY" not in json.dumps(result)
    finally:
        emulator.stop()


@pytest.mark.comfy
def test_auto_without_a_bucket_keeps_what_does_not_fit(comfy, tmp_path):
    result = run_job(comfy.url, {"workflow": big_and_small(side=256)},
                     {"INLINE_MAX_BYTES": "100000", "OUTPUT_KEEP_DIR": str(tmp_path / "kept")})
    video, still = by_prefix(result, "video"), by_prefix(result, "still")
    assert "base64" in still and "base64" not in video and video["omitted"] == "too_large_for_inline"
    kept = Path(video["kept_path"])
    assert kept.is_relative_to(tmp_path / "kept" / result["job_id"])
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == video["sha256"] and kept.stat().st_size == video["size"]


@pytest.mark.comfy
def test_base64_past_its_cap_fails_typed_and_keeps_the_files(comfy, tmp_path):
    with pytest.raises(AppError) as err:
        run_job(comfy.url, {"workflow": big_and_small(side=256), "output_mode": "base64"},
                {"BASE64_MAX_BYTES": "100000", "OUTPUT_KEEP_DIR": str(tmp_path / "kept")})
    assert (err.value.code, err.value.status) == ("result_too_large", 422)
    outputs = err.value.extra["outputs"]
    assert {o["filename"].split("_")[0] for o in outputs} == {"video", "still"}
    for output in outputs:
        assert hashlib.sha256(Path(output["kept_path"]).read_bytes()).hexdigest() == output["sha256"]


# ---- credentials travel sealed: a real Pod --------------------------------------------
def test_pod_refuses_plaintext_credentials_and_never_stores_sealed_ones(tmp_path):
    from client import EncryptedClient, PodEndpoint
    from tests.pod_process import start_pod

    server_key = PrivateKey.generate()
    pod = start_pod(tmp_path, env={"WORKER_PRIVATE_KEY_B64": base64.b64encode(bytes(server_key)).decode(),
                                   "DRY_RUN": "1", "GCS_ALLOWED_BUCKETS": "ci-outputs"})
    try:
        key = service_account_key("marker-7f3a")
        payload = {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}}, "gcs_bucket": "ci-outputs",
                   "gcs_credentials": key}
        status, body = pod.request("POST", "/run", payload)
        assert (status, body["error"]) == (400, "credentials_need_encryption:gcs_credentials")
        status, body = pod.request("POST", "/run", {**payload, "gcs_credentials": None, "gcs_bucket": "elsewhere"})
        assert (status, body["error"]) == (403, "gcs_bucket_not_allowed:elsewhere")
        result = EncryptedClient(PodEndpoint(pod.url)).run(payload)
        assert result["dry_run"] is True
    finally:
        pod.stop()
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    # The store, the logs, every file of the Pod: neither the key's id nor a line of its PEM.
    assert b"marker-7f3a" not in stored and key["private_key"].splitlines()[5].encode() not in stored
