"""The job runner end to end against a real ComfyUI process (stand-in or real)."""
import asyncio
import base64
import hashlib
import io
import json
import time

import pytest
from PIL import Image

from services.comfy.client import ComfyClient
from services.config import REPO_ROOT, Settings
from services.errors import AppError
from services.comfy.provider import FixedComfy
from services.jobs.runner import JobRunner
from services.jobs.workflow import isolate_outputs
from services.versions.spec import SpecStore
from tests import workflows

pytestmark = pytest.mark.comfy


def png_bytes(color=(255, 0, 0), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


async def run_jobs(url, payloads, env=None, **run_kwargs):
    settings = Settings.from_env({"DEFAULT_VERSION_ID": "demo", **(env or {})})
    client = ComfyClient(url)
    runner = JobRunner(settings, SpecStore(settings.versions_dir), FixedComfy(client))
    try:
        return await asyncio.gather(*(runner.run(p, **run_kwargs) for p in payloads), return_exceptions=True)
    finally:
        await runner.close()
        await client.close()


def one(url, payload, env=None, **kw):
    result = asyncio.run(run_jobs(url, [payload], env, **kw))[0]
    if isinstance(result, BaseException):
        raise result
    return result


def test_base64_result_has_the_seed_shape_and_a_decodable_png(comfy):
    result = one(comfy.url, {"workflow": workflows.image(width=512, height=512)})
    data = base64.b64decode(result["base64"])
    assert Image.open(io.BytesIO(data)).size == (512, 512)
    assert result["size"] == len(data)
    (out,) = result["outputs"]
    assert out["sha256"] == hashlib.sha256(data).hexdigest() and out["type"] == "image"
    assert out["content_type"] == "image/png" and out["node_id"] == "2"
    assert result["version_id"] == "demo" and result["prompt_id"]


def test_the_versions_default_workflow_runs(comfy):
    result = one(comfy.url, {"version_id": "demo"})
    assert Image.open(io.BytesIO(base64.b64decode(result["base64"]))).size == (512, 512)


def test_concurrent_jobs_never_share_files(comfy):
    payloads = [{"workflow": workflows.image(color=c, prefix="same")} for c in (1, 2, 3, 4)]
    results = asyncio.run(run_jobs(comfy.url, payloads))
    hashes = {r["outputs"][0]["sha256"] for r in results}
    assert len(hashes) == 4  # each job got its own image, not a neighbour's same-named file
    assert len({r["job_id"] for r in results}) == 4


def test_workflow_as_string_and_verbose(comfy):
    result = one(comfy.url, {"workflow": json.dumps(workflows.image()), "verbose": True})
    assert "cached_nodes" in result and set(result["timings_ms"]) >= {"validate", "submit", "execute", "deliver"}


def test_only_previews_means_no_outputs(comfy):
    with pytest.raises(AppError) as err:
        one(comfy.url, {"workflow": workflows.preview_only()})
    assert err.value.code == "no_outputs"


def test_unknown_node_and_missing_input_are_rejected_with_node_errors(comfy):
    with pytest.raises(AppError) as err:
        one(comfy.url, {"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}},
                                     "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}})
    assert err.value.code == "workflow_rejected:missing_nodes"  # pre-flight: ComfyUI never sees it
    with pytest.raises(AppError) as err:
        one(comfy.url, {"workflow": {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}})
    assert err.value.code == "workflow_rejected:prompt_outputs_failed_validation"
    assert err.value.as_dict()["node_errors"]["1"]["errors"][0]["type"] == "required_input_missing"


def test_input_images_are_uploaded_per_job(comfy):
    payload = {"workflow": workflows.load_invert_save("photo.png"),
               "images": [{"name": "photo.png", "image": base64.b64encode(png_bytes((255, 0, 0))).decode()}]}
    other = {"workflow": workflows.load_invert_save("photo.png"),
             "images": [{"name": "photo.png", "image": "data:image/png;base64," + base64.b64encode(png_bytes((0, 255, 0))).decode()}]}
    first, second = asyncio.run(run_jobs(comfy.url, [payload, other]))
    red = Image.open(io.BytesIO(base64.b64decode(first["base64"]))).convert("RGB").getpixel((0, 0))
    green = Image.open(io.BytesIO(base64.b64decode(second["base64"]))).convert("RGB").getpixel((0, 0))
    assert red == (0, 255, 255) and green == (255, 0, 255)  # inverted, and never each other's


def test_bad_base64_image(comfy):
    with pytest.raises(AppError) as err:
        one(comfy.url, {"workflow": workflows.load_invert_save("a.png"), "images": [{"name": "a.png", "image": "!!"}]})
    assert err.value.code == "invalid_input_image:a.png"


def test_job_timeout_interrupts_comfy(comfy):
    started = time.monotonic()
    with pytest.raises(AppError) as err:
        one(comfy.url, {"workflow": workflows.sleep_then_save(30, steps=300), "timeout": 1})
    assert err.value.code == "job_timeout" and time.monotonic() - started < 6
    # ComfyUI was interrupted: the next job runs at once instead of queueing behind 30 s.
    started = time.monotonic()
    one(comfy.url, {"workflow": workflows.image(color=77)})
    assert time.monotonic() - started < 5


def test_cancelling_the_job_interrupts_comfy(comfy):
    async def go():
        settings = Settings.from_env({"DEFAULT_VERSION_ID": "demo"})
        client = ComfyClient(comfy.url)
        runner = JobRunner(settings, SpecStore(REPO_ROOT / "versions"), FixedComfy(client))
        submitted = asyncio.Event()
        task = asyncio.create_task(runner.run({"workflow": workflows.sleep_then_save(30, steps=300)},
                                              on_submitted=lambda pid, backend: submitted.set()))
        await submitted.wait()
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        queue = await client.queue()
        await runner.close()
        await client.close()
        return queue
    deadline = time.monotonic() + 5
    queue = asyncio.run(go())
    while queue["queue_running"] and time.monotonic() < deadline:
        queue = asyncio.run(ComfyClient(comfy.url).queue())
    assert queue["queue_running"] == []


def test_no_history_returns_only_the_prompt_id(comfy):
    result = one(comfy.url, {"workflow": workflows.image(color=5)}, env={"NO_HISTORY": "1"})
    assert list(result) == ["prompt_id"]

    async def history():
        client = ComfyClient(comfy.url)
        try:
            return await client.history(result["prompt_id"])
        finally:
            await client.close()
    assert asyncio.run(history()) is None


def test_dry_run_never_touches_comfy():
    result = one("http://127.0.0.1:9", {"workflow": workflows.image()}, env={"DRY_RUN": "1"})
    assert result["dry_run"] is True and result["outputs"] == []


def test_comfy_not_reachable():
    with pytest.raises(AppError) as err:
        one("http://127.0.0.1:9", {"workflow": workflows.image()})
    assert err.value.code == "comfy_unreachable" and err.value.status == 503


def test_adopting_a_prompt_submitted_by_a_dead_worker(comfy):
    async def go():
        settings = Settings.from_env({"DEFAULT_VERSION_ID": "demo"})
        # The dead worker's client submitted the job's prompt (its socket is gone with it).
        dead = ComfyClient(comfy.url)
        prompt_id = await dead.submit(isolate_outputs(workflows.sleep_then_save(0.5, steps=2), "adopted-job"))
        await dead.close()
        client = ComfyClient(comfy.url)
        runner = JobRunner(settings, SpecStore(REPO_ROOT / "versions"), FixedComfy(client))
        try:
            return prompt_id, await runner.run({"workflow": workflows.sleep_then_save(0.5, steps=2)},
                                               job_id="adopted-job", resume_prompt_id=prompt_id)
        finally:
            await runner.close()
            await client.close()
    prompt_id, result = asyncio.run(go())
    assert result["prompt_id"] == prompt_id and result["outputs"]


def test_the_versions_models_are_fetched_before_the_job_and_timed(comfy, tmp_path):
    import hashlib
    import shutil

    from tests.http_server import LocalServer, send

    weights = b"W" * 4096
    hits = []

    def serve(req):
        hits.append(req.path)
        send(req, 200, weights)
    versions = tmp_path / "versions"
    versions.mkdir()
    shutil.copy(REPO_ROOT / "versions" / "demo.json", versions / "demo.json")
    with LocalServer() as server:
        url = server.route("/w.safetensors", serve)
        spec = json.loads((versions / "demo.json").read_text())
        spec["models"] = [{"name": "w.safetensors", "type": "checkpoints", "url": url, "size": len(weights),
                           "sha256": hashlib.sha256(weights).hexdigest()}]
        (versions / "demo.json").write_text(json.dumps(spec))
        # The model server listens on loopback: opt in to fetching from it.
        env = {"VERSIONS_DIR": str(versions), "DATA_ROOT": str(tmp_path / "data"), "FETCH_ALLOW_HOSTS": "127.0.0.1"}
        first = one(comfy.url, {"workflow": workflows.image(color=31)}, env=env)
        second = one(comfy.url, {"workflow": workflows.image(color=32)}, env=env)
        assert (tmp_path / "data" / "models" / "checkpoints" / "w.safetensors").read_bytes() == weights
        assert len(hits) == 1  # fetched once; the second job only checked it
        assert "models" in first["timings_ms"] and second["timings_ms"]["models"] < first["timings_ms"]["models"] + 1000

        spec["models"][0].update(name="gone.safetensors", url=server.url + "/gone", sha256="1" * 64)
        (versions / "demo.json").write_text(json.dumps(spec))
        with pytest.raises(AppError) as err:
            one(comfy.url, {"workflow": workflows.image(color=33)}, env=env)
    assert err.value.code == "model_missing:gone.safetensors" and "404" in err.value.detail
