"""Pre-flight (services/jobs/preflight.py): every missing node and model of a workflow in one typed
400, with close matches, before ComfyUI sees it; against a real ComfyUI process (stand-in or
real), through the runner, the serverless handler and the Pod."""
from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

import pytest

from services.comfy.client import ComfyClient
from services.errors import AppError
from services.jobs import preflight
from services.jobs.preflight import Catalog, find_missing
from services.versions.spec import ModelSpec
from tests import workflows
from tests.pod_process import start_pod
from tests.test_runner import one
from tests.test_serverless import Handler
from tests.timings import TIMINGS

FIXTURES = Path(__file__).parent / "fixtures" / "comfy"
SHIPPED = ("v1-5-pruned-emaonly.safetensors", "dreamshaper_8.safetensors")


def broken_workflow() -> dict:
    """Two misspelt checkpoints and one misspelt node class."""
    workflow = workflows.txt2img("v1-5-pruned-emaonly.safetensor")
    workflow["5"]["class_type"] = "KSamplr"
    workflow["8"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "dreamshaper8.safetensors"}}
    return workflow


def ship_models(comfy) -> None:
    """Model files where the running ComfyUI lists checkpoints (both backends read base_dir/models)."""
    folder = comfy.base_dir / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        (folder / name).write_bytes(b"")


def assert_names_all_three(body: dict) -> None:
    # Best match first (a real ComfyUI also offers KSamplerSelect, ...).
    assert [(m["node_id"], m["class_type"], m["suggestions"][0]) for m in body["missing_nodes"]] == \
        [("5", "KSamplr", "KSampler")]
    assert sorted((m["node_id"], m["input"], m["name"], m["suggestions"][0]) for m in body["missing_models"]) == [
        ("1", "ckpt_name", "v1-5-pruned-emaonly.safetensor", "v1-5-pruned-emaonly.safetensors"),
        ("8", "ckpt_name", "dreamshaper8.safetensors", "dreamshaper_8.safetensors")]


# ---- the pure part: which inputs are model inputs, what is missing, which code -------------------
def recorded_info() -> dict:
    """A real ComfyUI 0.3.64's /object_info entries, plus loaders of the newer COMBO schema."""
    info = json.loads((FIXTURES / "object_info_file_inputs.json").read_text())  # with an empty checkpoints folder
    info |= json.loads((FIXTURES / "object_info_selected.json").read_text())  # with random_sd15.safetensors
    info["LoraLoaderModelOnly"] = {"input": {"required": {
        "model": ["MODEL", {}], "lora_name": [[], {}], "strength_model": ["FLOAT", {"default": 1.0}]}}}
    info["UNETLoader"] = {"input": {"required": {
        "unet_name": ["COMBO", {"options": ["flux1-dev.gguf", "sub/wan.safetensors"]}],
        "weight_dtype": ["COMBO", {"options": ["default", "fp8_e4m3fn"]}]}}}
    info["ModeSwitch"] = {"input": {"required": {"mode": [[], {}]}}}  # empty, but not named like a model
    return info


def test_model_inputs_are_read_from_object_info():
    catalog = Catalog.from_object_info(recorded_info())
    assert catalog.model_inputs["CheckpointLoaderSimple"] == {"ckpt_name": frozenset({"random_sd15.safetensors"})}
    assert catalog.model_inputs["LoraLoaderModelOnly"] == {"lora_name": frozenset()}
    assert catalog.model_inputs["UNETLoader"] == {"unet_name": frozenset({"flux1-dev.gguf", "sub/wan.safetensors"})}
    # Sampler lists, job files (upload flags, LoadLatent) and unnamed empty lists are no models.
    assert set(catalog.model_inputs) == {"CheckpointLoaderSimple", "LoraLoaderModelOnly", "UNETLoader"}


def test_every_problem_at_once_and_the_code_a_missing_node_wins():
    catalog = Catalog.from_object_info(recorded_info())
    workflow = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "random_sd15.safetensor"}},
                "2": {"class_type": "UNETLoader", "inputs": {"unet_name": "sub/wan.safetensors", "weight_dtype": "x"}},
                "3": {"class_type": "LoraLoaderModelOnly",
                      "inputs": {"model": ["2", 0], "lora_name": "style.safetensors"}},
                "4": {"class_type": "ksampler", "inputs": {}},
                "5": {"class_type": "UNETLoader", "inputs": {"unet_name": ["9", 0]}}}  # a link names no file here
    missing = find_missing(workflow, catalog)
    error = preflight.rejection(missing, catalog)
    body = error.as_dict()
    assert error.code == "workflow_rejected:missing_nodes" and error.status == 400
    assert body["missing_nodes"] == [{"node_id": "4", "class_type": "ksampler", "suggestions": ["KSampler"]}]
    assert [(m["node_id"], m["input"], m["suggestions"]) for m in body["missing_models"]] == [
        ("1", "ckpt_name", ["random_sd15.safetensors"]), ("3", "lora_name", [])]
    assert "did you mean 'KSampler'" in error.detail and "'random_sd15.safetensor'" in error.detail

    models_only = find_missing({k: workflow[k] for k in "123"}, catalog)
    assert preflight.rejection(models_only, catalog).code == "workflow_rejected:missing_models"
    # The version's (and the job's) own models are fetched before ComfyUI is asked: present.
    assert not find_missing({k: workflow[k] for k in "23"}, catalog, frozenset({"style.safetensors"}))


def test_a_huge_broken_workflow_gets_a_bounded_error():
    catalog = Catalog.from_object_info(recorded_info())
    workflow = {str(i): {"class_type": f"Missing{i}", "inputs": {}} for i in range(5000)}
    body = preflight.rejection(find_missing(workflow, catalog), catalog).as_dict()
    assert len(body["missing_nodes"]) == preflight.MAX_REPORTED and "and 4995 more" in body["detail"]


# ---- against a running ComfyUI --------------------------------------------------------------------
@pytest.mark.comfy
def test_two_missing_models_and_a_missing_node_make_one_error(comfy):
    ship_models(comfy)
    with pytest.raises(AppError) as err:
        one(comfy.url, {"workflow": broken_workflow()})
    assert err.value.code == "workflow_rejected:missing_nodes" and err.value.status == 400
    assert_names_all_three(err.value.as_dict())


class CountingClient(ComfyClient):
    """A real client that counts the per-class /object_info requests pre-flight makes."""

    def __init__(self, url):
        super().__init__(url)
        self.lookups: list[str] = []

    async def object_info(self, node_class=None):
        if node_class:
            self.lookups.append(node_class)
        return await super().object_info(node_class)


@pytest.mark.comfy
def test_a_valid_workflow_passes_and_a_model_added_later_is_found(comfy):
    ship_models(comfy)

    async def scenario():
        client = CountingClient(comfy.url)
        try:
            info = await client.object_info_once()
            await preflight.check(client, workflows.txt2img(SHIPPED[0]), info, ())
            assert client.lookups == []  # a valid job: no request beyond the cached list
            late = comfy.base_dir / "models" / "checkpoints" / "late.safetensors"
            late.write_bytes(b"")  # like a download finishing while ComfyUI runs
            assert info is await client.object_info_once()  # the cached list does not name it
            await preflight.check(client, workflows.txt2img("late.safetensors"), info, ())
            assert client.lookups == ["CheckpointLoaderSimple"]
            await preflight.check(client, workflows.txt2img("spec.safetensors"), info,
                                  (ModelSpec("spec.safetensors", "checkpoints", "https://example.invalid/x"),))
            assert client.lookups == ["CheckpointLoaderSimple"]  # the version's own models are present
        finally:
            await client.close()

    asyncio.run(scenario())
    result = one(comfy.url, {"workflow": workflows.image(width=16, height=16)})
    assert result["outputs"]


@pytest.mark.comfy
def test_cost_per_job_with_the_cached_node_list(comfy):
    """Measured, not asserted as speed: median of 200 pre-flights of a 30-node workflow."""
    ship_models(comfy)
    workflow = {f"{copy}{node_id}": {**node, "inputs": {k: [f"{copy}{v[0]}", v[1]] if isinstance(v, list) else v
                                                        for k, v in node["inputs"].items()}}
                for copy, checkpoint in zip("abcd", SHIPPED * 2)
                for node_id, node in workflows.txt2img(checkpoint).items()}
    workflow |= {f"x{i}": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
                 for i in range(2)}
    assert len(workflow) == 30

    async def measure():
        client = ComfyClient(comfy.url)
        try:
            info = await client.object_info_once()
            # Built once per ComfyUI start; a real ComfyUI lists hundreds of classes: time 1,300.
            large = {f"{name}{i}": entry for i in range(50) for name, entry in recorded_info().items()}
            started = time.perf_counter()
            catalog = Catalog.from_object_info(large)
            build_ms = (time.perf_counter() - started) * 1000
            await preflight.check(client, workflow, info, ())  # the catalogue is built once per start
            samples = []
            for _ in range(200):
                started = time.perf_counter()
                await preflight.check(client, workflow, await client.object_info_once(), ())
                samples.append((time.perf_counter() - started) * 1000)
            return build_ms, samples, len(catalog.classes)
        finally:
            await client.close()

    build_ms, samples, classes = asyncio.run(measure())
    TIMINGS["preflight"].update({"median_ms": round(statistics.median(samples), 4),
                                 "p95_ms": round(sorted(samples)[189], 4), "nodes": 30,
                                 "catalog_build_ms": round(build_ms, 3), "classes": classes})
    print("preflight timings:", dict(TIMINGS["preflight"]))


@pytest.mark.comfy
def test_serverless_answers_the_typed_error(tmp_path):
    handler = Handler(tmp_path)
    try:
        answer = handler.runsync({"workflow": broken_workflow()})
    finally:
        handler.stop()
    assert answer["status"] == "FAILED"
    code, _, detail = answer["error"].partition(": ")  # RunPod keeps only this string: it names all three
    assert code == "workflow_rejected:missing_nodes"
    assert "'KSamplr' (did you mean 'KSampler'?)" in detail
    assert "'v1-5-pruned-emaonly.safetensor'" in detail and "'dreamshaper8.safetensors'" in detail


@pytest.mark.comfy
def test_pod_answers_the_typed_error(tmp_path):
    pod = start_pod(tmp_path)
    try:
        status, body = pod.request("POST", "/run", {"workflow": broken_workflow()})
    finally:
        pod.stop()
    assert status == 400 and body["error"] == "workflow_rejected:missing_nodes", body
    assert body["missing_nodes"][0]["suggestions"] == ["KSampler"]
    assert {m["name"] for m in body["missing_models"]} == {"v1-5-pruned-emaonly.safetensor", "dreamshaper8.safetensors"}
