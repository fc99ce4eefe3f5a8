"""Provenance on every result: version, commits, verified model hashes, workflow hash, seeds,
and per output whether ComfyUI computed it in this job or served it from its cache."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import random
import sys
import zlib

import pytest
from PIL import Image

from services.comfy.versioned import VersionedComfy
from services.config import Settings
from services.jobs import provenance
from services.jobs.runner import JobRunner
from services.models.cache import cache_root, index_path
from services.models.index import HashIndex
from services.versions.install import install
from services.versions.spec import SpecStore
from tests import runner_support, workflows
from tests.versions_support import MAIN_PY, World, commit, file_url, write_spec


def recomputed(workflow: dict) -> str:
    """What a caller computes from the workflow it sent (README: Jobs: payload and result)."""
    return hashlib.sha256(json.dumps(workflow, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode()).hexdigest()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == provenance.PNG_SIGNATURE
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert data[pos + 8 + length:pos + 12 + length] == zlib.crc32(kind + body).to_bytes(4, "big")
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def text_chunks(data: bytes) -> dict[str, str]:
    return {body.split(b"\0", 1)[0].decode("latin-1"): body.split(b"\0", 1)[1].decode("latin-1")
            for kind, body in png_chunks(data) if kind == b"tEXt"}


def with_seed(workflow: dict, seed: int) -> dict:
    """A sampler nothing consumes: ComfyUI runs only what leads to an output, but it is in the workflow."""
    return {**workflow, "9": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 1, "cfg": 1.0,
                                                                   "sampler_name": "euler", "scheduler": "normal",
                                                                   "denoise": 1.0}}}


async def run_jobs(url: str, payloads: list[dict], env: dict | None = None) -> list[dict]:
    return await runner_support.run_jobs(url, payloads, Settings.from_env({"DEFAULT_VERSION_ID": "demo", **(env or {})}))


# ---- against ComfyUI (stand-in here, a real one with `make test-real`) ----------------------
@pytest.mark.comfy
def test_an_identical_rerun_is_served_from_the_cache_and_the_workflow_hash_is_the_callers(comfy):
    color = random.Random().randrange(1 << 24)  # nothing ComfyUI ran before can match it
    workflow = with_seed(workflows.image(width=32, height=32, color=color, prefix="again"), 4242)
    sent = json.loads(json.dumps(workflow))
    first, second = asyncio.run(run_jobs(comfy.url, [{"workflow": workflow}, {"workflow": json.dumps(workflow)}]))
    assert workflow == sent  # the runner rewrote its own copy, not the caller's
    assert [o["cached"] for o in first["outputs"]] == [False]
    assert [o["cached"] for o in second["outputs"]] == [True]
    for result in (first, second):
        origin = result["provenance"]
        assert origin["workflow_sha256"] == recomputed(sent)  # an object or a JSON string: one hash
        assert origin["seeds"] == {"9": {"seed": 4242}}
        assert origin["version_id"] == "demo" and origin["models"] == []
        # A ComfyUI someone else runs (COMFY_URL): its code is not ours to vouch for.
        assert (origin["runtime"], origin["comfyui_commit"], origin["custom_nodes"]) == ("external", None, {})


@pytest.mark.comfy
def test_the_png_chunk_is_added_without_touching_the_pixels_or_comfyuis_own_chunks(comfy):
    workflow = workflows.image(width=24, height=16, color=random.Random().randrange(1 << 24), prefix="stamped")
    plain, = asyncio.run(run_jobs(comfy.url, [{"workflow": workflow}]))
    stamped, = asyncio.run(run_jobs(comfy.url, [{"workflow": workflow}], {"PROVENANCE_PNG": "1"}))
    raw, marked = base64.b64decode(plain["base64"]), base64.b64decode(stamped["base64"])
    assert stamped["outputs"][0]["sha256"] == hashlib.sha256(marked).hexdigest()  # of what was delivered
    assert stamped["outputs"][0]["size"] == len(marked)
    assert provenance.PNG_KEYWORD not in text_chunks(raw)
    texts = text_chunks(marked)
    assert "prompt" in texts and "prompt" in text_chunks(raw)  # ComfyUI's chunks are kept
    assert json.loads(texts[provenance.PNG_KEYWORD]) == {**stamped["provenance"], "node_id": "2", "cached": True}
    # The image data is byte for byte ComfyUI's: no re-encoding, the chunk sits just before IEND.
    assert [b for k, b in png_chunks(marked) if k == b"IDAT"] == [b for k, b in png_chunks(raw) if k == b"IDAT"]
    assert [k for k, _ in png_chunks(marked)][-2:] == [b"tEXt", b"IEND"]
    assert Image.open(io.BytesIO(marked)).tobytes() == Image.open(io.BytesIO(raw)).tobytes()


@pytest.mark.comfy
def test_no_history_results_stay_minimal(comfy):
    result, = asyncio.run(run_jobs(comfy.url, [{"workflow": workflows.image(color=5)}], {"NO_HISTORY": "1"}))
    assert set(result) == {"prompt_id"}


# ---- an installed version and developer mode (ComfyUI is the stand-in, from a version tree) --
TXT2IMG = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["1", 1]}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
    "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 31337, "steps": 2, "cfg": 7.0,
                                               "sampler_name": "euler", "scheduler": "normal", "positive": ["2", 0],
                                               "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
    "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "lighthouse"}},
    # Not in the spec, but named by the workflow: a file the hash index knows, and one it does not.
    # Dangling nodes (ComfyUI runs only what leads to an output): inputs only the provenance reads.
    "8": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "side.safetensors"}},
    "10": {"class_type": "KSampler", "inputs": {"lora_name": "style.safetensors", "noise_seed": 7}},
}


@pytest.fixture(scope="module")
def version_world(tmp_path_factory):
    """Version `lit` installed (ComfyUI and one custom node from local repositories), its model
    in the cache, and two more model files the spec does not name."""
    root = tmp_path_factory.mktemp("provenance")
    world = World(root / "world")
    settings = world.settings(root, COMFY_START_TIMEOUT="30", LOG_SILENT="1")
    models = cache_root(settings)
    files = {("checkpoints", "tiny.safetensors"): b"tiny weights " * 1000,
             ("checkpoints", "side.safetensors"): b"side weights " * 700,
             ("loras", "style.safetensors"): b"unhashed lora " * 300}
    for (kind, name), data in files.items():
        (models / kind).mkdir(parents=True, exist_ok=True)
        (models / kind / name).write_bytes(data)
    side = models / "checkpoints" / "side.safetensors"
    HashIndex(index_path(settings)).record(side, side.stat(), hashlib.sha256(files[("checkpoints", "side.safetensors")]).hexdigest())
    tiny = files[("checkpoints", "tiny.safetensors")]
    write_spec(settings.versions_dir, "lit", (file_url(world.comfy), world.comfy_v2),
               nodes=[{"name": "hello", "repo": file_url(world.node), "commit": world.node_v1}],
               models=[{"name": "tiny.safetensors", "type": "checkpoints", "url": "https://example.invalid/tiny.safetensors",
                        "size": len(tiny), "sha256": hashlib.sha256(tiny).hexdigest()}])
    install(SpecStore(settings.versions_dir).load("lit"), settings)
    return world, root, settings, files


def run_on(settings: Settings, payload: dict) -> dict:
    from tests.standin_process import free_port
    settings = settings.replace(comfy_port=free_port())

    async def job():
        provider = VersionedComfy(settings)
        runner = JobRunner(settings, SpecStore(settings.versions_dir), provider)
        try:
            return await runner.run(payload)
        finally:
            await runner.close()
            await provider.close()

    return asyncio.run(job())


def test_an_installed_version_reports_its_lock_commits_and_the_verified_model_hashes(version_world):
    world, root, settings, files = version_world
    result = run_on(settings, {"version_id": "lit", "workflow": TXT2IMG})
    origin = result["provenance"]
    assert result["comfy_version"] == "lit" and origin["version_id"] == "lit"
    assert (origin["runtime"], origin["comfyui_commit"]) == ("version", world.comfy_v2)
    assert origin["custom_nodes"] == {"hello": world.node_v1}
    on_disk = {name: hashlib.sha256((cache_root(settings) / kind / name).read_bytes()).hexdigest()
               for kind, name in files}
    assert origin["models"] == [
        {"name": "tiny.safetensors", "type": "checkpoints", "sha256": on_disk["tiny.safetensors"], "in_spec": True},
        {"name": "side.safetensors", "type": "checkpoints", "sha256": on_disk["side.safetensors"], "in_spec": False},
        {"name": "style.safetensors", "type": "loras", "sha256": None, "in_spec": False},  # never hashed
    ]
    assert origin["seeds"] == {"5": {"seed": 31337}, "10": {"noise_seed": 7}}
    assert origin["workflow_sha256"] == recomputed(TXT2IMG)
    assert [o["cached"] for o in result["outputs"]] == [False]


def test_a_model_changed_after_it_was_hashed_has_no_hash_to_vouch_for(version_world):
    _, _, settings, _ = version_world
    spec = SpecStore(settings.versions_dir).load("lit")
    vae = cache_root(settings) / "vae" / "changed.safetensors"
    vae.parent.mkdir(exist_ok=True)
    vae.write_bytes(b"vae")
    HashIndex(index_path(settings)).record(vae, vae.stat(), hashlib.sha256(b"vae").hexdigest())
    workflow = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "changed.safetensors"}}}
    before = provenance.build(spec, settings, workflow, "lit")["models"][-1]
    assert before == {"name": "changed.safetensors", "type": "vae", "sha256": hashlib.sha256(b"vae").hexdigest(),
                      "in_spec": False}
    vae.write_bytes(b"vae, changed")  # the index entry no longer matches the file
    assert provenance.build(spec, settings, workflow, "lit")["models"][-1] == {**before, "sha256": None}


def test_developer_mode_reports_the_checkouts_git_heads(version_world, tmp_path):
    world, root, settings, _ = version_world
    home = tmp_path / "ComfyUI"
    head = commit(home, {"main.py": MAIN_PY, "comfy/__init__.py": ""}, "dev")
    node_head = commit(home / "custom_nodes" / "hello", {"__init__.py": "NODE_CLASS_MAPPINGS = {}\n"}, "dev node")
    dev = world.settings(root, COMFY_START_TIMEOUT="30", LOG_SILENT="1", COMFY_HOME=str(home),
                         COMFY_PYTHON=sys.executable)
    workflow = workflows.image(width=8, height=8, color=9)
    result = run_on(dev, {"version_id": "lit", "workflow": workflow})
    origin = result["provenance"]
    assert result["comfy_version"] == f"comfy_home:{home}"
    assert (origin["runtime"], origin["comfyui_commit"], origin["custom_nodes"]) == ("comfy_home", head,
                                                                                      {"hello": node_head})
    assert origin["models"][0]["in_spec"] and origin["seeds"] == {}
    assert origin["workflow_sha256"] == recomputed(workflow)


def test_object_metadata_is_flat_strings():
    origin = {"version_id": "v", "workflow_sha256": "ab" * 32, "comfyui_commit": None}
    assert provenance.object_metadata(origin, True) == {
        "appliance-version-id": "v", "appliance-workflow-sha256": "ab" * 32, "appliance-cached": "true"}
    assert provenance.object_metadata({**origin, "comfyui_commit": "c" * 40}, False)["appliance-comfyui-commit"] == "c" * 40


def test_data_that_is_not_a_whole_png_is_delivered_unchanged():
    assert provenance.add_png_text(provenance.PNG_SIGNATURE + b"\0\0\0\x05IHDR", "k", "v").endswith(b"IHDR")


def test_a_lone_surrogate_hashes_instead_of_crashing():
    """Valid JSON, not valid UTF-8: the hash of such a workflow (and of such a request body,
    services/api/idempotency.py) must not raise; valid text still hashes as plain UTF-8."""
    from services.api.idempotency import request_sha256
    assert len(provenance.workflow_sha256({"1": {"inputs": {"text": "\ud800"}}})) == 64
    assert len(request_sha256({"workflow": {}, "gcs_prefix": "\ud800"})) == 64
    plain = {"1": {"inputs": {"text": "é"}}}
    assert provenance.workflow_sha256(plain) == hashlib.sha256(
        json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
