"""Models a job brings itself (`models: [{url, type, name, sha256}]`), end to end: the 127.0.0.1
model server (tests/model_server.py) serves them, the runner fetches them into the model cache
the ComfyUI stand-in reads (a real process, started once for the module), and a workflow loads
them. Not `comfy`-marked: the checkpoints here are random bytes, which only the stand-in loads."""
from __future__ import annotations

import asyncio
import time

import pytest
import requests

from services.comfy.client import ComfyClient
from services.comfy.provider import FixedComfy
from services.config import Settings
from services.errors import AppError
from services.jobs.runner import JobRunner
from services.models.cache import Target, cache_root, index_path
from services.models.index import HashIndex
from services.models.integrity import check_file
from services.versions.spec import SpecStore
from tests import workflows
from tests.http_server import LocalServer
from tests.model_fixtures import FAST, litter, payload, sha
from tests.model_server import Blob
from tests.standin_process import start_standin


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    handle = start_standin(tmp_path_factory.mktemp("job-models"))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def server():
    """The model server: each test serves its files under routes of its own."""
    with LocalServer() as local:
        yield local


def settings_for(standin, tmp_path, **extra: str) -> Settings:
    # COMFY_CACHE_ROOT/models is the stand-in's own models folder: the cache its ComfyUI reads,
    # as a version's extra_model_paths make it in production.
    return Settings.from_env({**FAST, "DATA_ROOT": str(tmp_path / "data"), "COMFY_CACHE_ROOT": str(standin.base_dir),
                              "DEFAULT_VERSION_ID": "demo", **extra})


def run(standin, settings: Settings, payload_: dict) -> dict:
    async def go():
        client = ComfyClient(standin.url)
        runner = JobRunner(settings, SpecStore(settings.versions_dir), FixedComfy(client))
        try:
            return await runner.run(payload_)
        finally:
            await runner.close()
            await client.close()
    return asyncio.run(go())


def validate(settings: Settings, payload_: dict):
    """What the Pod API and the serverless handler check before a job is queued."""
    return JobRunner(settings, SpecStore(settings.versions_dir), FixedComfy(None)).validate(payload_)


def checkpoints_listed(standin) -> list[str]:
    info = requests.get(standin.url + "/object_info/CheckpointLoaderSimple", timeout=5).json()
    return info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]


def model(url: str, data: bytes, name: str, **fields) -> dict:
    return {"url": url, "type": "checkpoints", "name": name, "sha256": sha(data), **fields}


def test_a_jobs_model_is_fetched_verified_loaded_and_reused_by_the_next_job(standin, server, tmp_path):
    settings = settings_for(standin, tmp_path)
    data = payload(300_000, seed=1)
    blob = Blob(data)
    url = server.route("/ckpt", blob)
    name = "job-brought.safetensors"
    assert name not in checkpoints_listed(standin)
    job = {"workflow": workflows.txt2img(name), "models": [model(url, data, name, size=len(data))]}

    first = run(standin, settings, job)
    assert first["outputs"] and first["outputs"][0]["content_type"] == "image/png"
    path = cache_root(settings) / "checkpoints" / name
    assert path.read_bytes() == data and litter(path.parent) == []
    assert name in checkpoints_listed(standin)  # the same ComfyUI, not restarted, lists it now
    assert len(blob.requests) == 1

    second = run(standin, settings, job)
    assert second["outputs"] and len(blob.requests) == 1  # found through the hash index: no download


def test_a_wrong_sha256_fails_the_job_and_leaves_no_file(standin, server, tmp_path):
    settings = settings_for(standin, tmp_path)
    data = payload(120_000, seed=2)
    name = "wrong-hash.safetensors"
    job = {"workflow": workflows.txt2img(name),
           "models": [model(server.route("/c", Blob(data, corrupt=True)), data, name)]}
    with pytest.raises(AppError) as err:
        run(standin, settings, job)
    assert err.value.code == "checksum_mismatch" and err.value.extra["model"] == f"checkpoints/{name}"
    root = cache_root(settings)
    assert not (root / "checkpoints" / name).exists() and litter(root / "checkpoints") == []
    quarantine = root / ".quarantine" / "checkpoints"
    assert not quarantine.exists() or not any(p.name.startswith(name) for p in quarantine.iterdir())


def test_a_model_larger_than_the_limit_is_stopped_and_leaves_no_partial(standin, server, tmp_path):
    settings = settings_for(standin, tmp_path, JOB_MODELS_MAX_BYTES="100000")
    data = payload(400_000, seed=3)
    name = "too-big.safetensors"
    job = {"workflow": workflows.txt2img(name), "models": [model(server.route("/big", Blob(data)), data, name)]}
    with pytest.raises(AppError) as err:
        run(standin, settings, job)  # no size declared: the announced length gives it away
    assert err.value.code == "job_models_too_large"
    folder = cache_root(settings) / "checkpoints"
    assert not (folder / name).exists() and litter(folder) == []


def test_a_different_file_under_the_name_is_never_replaced(standin, server, tmp_path):
    settings = settings_for(standin, tmp_path)
    theirs, ours = payload(50_000, seed=4), payload(50_000, seed=5)
    blob = Blob(ours)
    url = server.route("/ours", blob)
    for name, indexed in (("taken-known.safetensors", True), ("taken-unhashed.safetensors", False)):
        target = Target.of(cache_root(settings), "checkpoints", name)
        target.folder.mkdir(parents=True, exist_ok=True)
        target.path.write_bytes(theirs)
        if indexed:  # what a version's or another job's verified fetch leaves in the index
            assert check_file(HashIndex(index_path(settings)), target.path, size=None, sha256=sha(theirs)).ok
        job = {"workflow": workflows.txt2img(name), "models": [model(url, ours, name)]}
        with pytest.raises(AppError) as err:
            # Known from the index: refused at submission. Unhashed: the runner hashes it and refuses.
            validate(settings, job) if indexed else run(standin, settings, job)
        assert (err.value.code, err.value.status) == (f"model_exists:checkpoints/{name}", 409)
        assert target.path.read_bytes() == theirs and litter(target.folder) == []
    assert blob.requests == []


@pytest.mark.parametrize("entry, code", [
    ({"url": "http://127.0.0.1:9/m"}, "url_forbidden:loopback"),
    ({"url": "http://169.254.169.254/latest"}, "url_forbidden:link_local"),
    ({"url": "http://user:pw@example.com/m"}, "url_forbidden:userinfo"),
    ({"url": "gs://bucket/m.safetensors"}, "unsupported_scheme:gs"),
    ({"url": "ftp://example.com/m"}, "unsupported_scheme:ftp"),
    ({"sha256": None}, "invalid_payload:models"),
    ({"sha256": "abc"}, "invalid_payload:sha256"),
    ({"type": "weights"}, "invalid_model_type:weights"),
    ({"name": "../m.safetensors"}, "invalid_filename"),
    ({"name": "sub/m.safetensors"}, "invalid_filename"),
    ({"name": ".hidden"}, "invalid_filename"),
    ({"size": 30 * 2**30}, "job_models_too_large"),
    ({"sha": "typo"}, "invalid_payload:models"),
])
def test_bad_entries_are_refused_at_submission(tmp_path, entry, code):
    # No FETCH_ALLOW_HOSTS: the policy a Pod runs with.
    settings = Settings.from_env({"DATA_ROOT": str(tmp_path / "data"), "LOG_SILENT": "1"})
    good = {"url": "https://huggingface.co/org/repo/resolve/" + "a" * 40 + "/m.safetensors",
            "type": "checkpoints", "name": "m.safetensors", "sha256": "0" * 64}
    item = {k: v for k, v in {**good, **entry}.items() if v is not None}
    with pytest.raises(AppError) as err:
        validate(settings, {"workflow": workflows.image(), "models": [item]})
    assert err.value.code == code and 400 <= err.value.status < 500
    assert validate(settings, {"workflow": workflows.image(), "models": [good]})[0].models[0].sha256 == "0" * 64


@pytest.mark.parametrize("models, env", [
    ("not a list", {}),
    ([{"url": "https://example.com/m", "type": "loras", "name": f"m{i}.safetensors", "sha256": "0" * 64}
      for i in range(9)], {}),
    ([{"url": "https://example.com/m", "type": "unet", "name": "m.safetensors", "sha256": "0" * 64},
      {"url": "https://example.com/n", "type": "diffusion_models", "name": "m.safetensors", "sha256": "1" * 64}], {}),
    ([{"url": "https://example.com/m", "type": "loras", "name": "m.safetensors", "sha256": "0" * 64}],
     {"JOB_MODELS_MAX_BYTES": "0"}),
])
def test_bad_lists_are_refused_at_submission(tmp_path, models, env):
    settings = Settings.from_env({"DATA_ROOT": str(tmp_path / "data"), "LOG_SILENT": "1", **env})
    with pytest.raises(AppError) as err:
        validate(settings, {"workflow": workflows.image(), "models": models})
    assert err.value.code == "invalid_payload:models"


def test_a_cancelled_job_stops_its_download_and_leaves_no_partial(standin, server, tmp_path):
    settings = settings_for(standin, tmp_path, DOWNLOAD_SEGMENTS="1")
    data = payload(6 << 20, seed=6)
    blob = Blob(data, rate=1 << 20)  # 6 s in all: long enough to cancel in the middle
    name = "cancelled.safetensors"
    folder = cache_root(settings) / "checkpoints"
    job = {"workflow": workflows.txt2img(name), "models": [model(server.route("/slow", blob), data, name)]}

    async def cancel_midway() -> float:
        client = ComfyClient(standin.url)
        runner = JobRunner(settings, SpecStore(settings.versions_dir), FixedComfy(client))
        task = asyncio.create_task(runner.run(job))
        try:
            while blob.sent < 1 << 20:
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.monotonic()
        finally:
            await runner.close()
            await client.close()

    cancelled_at = asyncio.run(cancel_midway())  # returns once the download thread has ended
    assert time.monotonic() - cancelled_at < 3.5  # it stopped at its next progress report, not at the end
    assert not (folder / name).exists() and litter(folder) == []
