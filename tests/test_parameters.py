"""Named parameters and overrides (issue 16): declarations checked when a spec loads, job values
checked into typed 400s, applied through the runner to a real ComfyUI (the stand-in), and
`GET /versions` on a real Pod."""
import asyncio
import base64
import io
import json
import shutil

import pytest
from PIL import Image

from services.config import REPO_ROOT, Settings
from services.errors import AppError
from services.jobs.runner import JobRunner
from services.versions.spec import SpecStore
from tests import runner_support, workflows
from tests.pod_process import start_pod
from tests.test_pod import _documented_responses

TOKEN = "params-token"
COMFYUI = {"repo": "https://github.com/Comfy-Org/ComfyUI.git", "commit": "a" * 40}
# Runs on the stand-in: an EmptyImage whose colour, width, height and file prefix are parameters.
KNOBS = {
    "id": "knobs", "description": "test version with parameters", "comfyui": COMFYUI,
    "workflow": workflows.image(width=64, height=64, color=0, prefix="knobs"),
    "parameters": {
        "color": {"node": "1", "input": "color", "type": "int", "min": 0, "max": 0xFFFFFF, "default": 0x0000FF,
                  "description": "fill colour"},
        "width": {"node": "1", "input": "width", "type": "int", "min": 8, "max": 256},
        "height": {"node": "1", "input": "height", "type": "enum", "choices": [32, 64, 96]},
        "prefix": {"node": "2", "input": "filename_prefix", "type": "string"},
    },
}
# Validated only (never run): a float and a boolean input of some node.
TYPED = {
    "id": "typed", "comfyui": COMFYUI,
    "workflow": {"1": {"class_type": "Knob", "inputs": {"strength": 0.5, "flag": True, "mode": "fast",
                                                        "image": ["0", 0]}},
                 "0": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}},
    "parameters": {
        "strength": {"node": "1", "input": "strength", "type": "float", "min": 0, "max": 1},
        "flag": {"node": "1", "input": "flag", "type": "boolean"},
        "mode": {"node": "1", "input": "mode", "type": "enum", "choices": ["fast", "slow"]},
        "seed": {"node": "0", "input": "color", "type": "int"},
    },
}


def write_versions(folder):
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "versions" / "demo.json", folder / "demo.json")
    for spec in (KNOBS, TYPED):
        (folder / f"{spec['id']}.json").write_text(json.dumps(spec))
    return folder


def copy_of(spec):
    return json.loads(json.dumps(spec))


# --- declarations, checked when the spec loads ---------------------------------------------------

def load(tmp_path, spec):
    (tmp_path / f"{spec['id']}.json").write_text(json.dumps(spec))
    return SpecStore(tmp_path).load(spec["id"])


def test_declared_defaults_are_written_into_the_default_workflow(tmp_path):
    spec = load(tmp_path, KNOBS)
    assert spec.workflow["1"]["inputs"]["color"] == 0x0000FF  # declared default
    assert spec.parameters["width"].default == 64  # none declared: the workflow's own value
    assert spec.parameters["height"].public() == {"type": "enum", "default": 64, "node": "1", "input": "height",
                                                  "description": "", "choices": [32, 64, 96]}
    demo = SpecStore(REPO_ROOT / "versions").load("demo")
    assert set(demo.parameters) == {"width", "height", "color"} and demo.workflow["1"]["inputs"]["width"] == 512


def _param(name, **changes):
    def mutate(spec):
        spec["parameters"][name].update(changes)
    return mutate


@pytest.mark.parametrize("mutate,where", [
    (_param("width", node="9"), "/parameters/width/node"),
    (_param("width", input="depth"), "/parameters/width/input"),
    (_param("width", node="2", input="images"), "/parameters/width/input"),  # a link, not a value
    (_param("width", default="wide"), "/parameters/width/default"),
    (_param("width", default=True), "/parameters/width/default"),  # true is not an int
    (_param("width", default=4), "/parameters/width/default"),  # below min
    (_param("width", default=64.0), "/parameters/width/default"),
    (_param("width", min=100, max=50), "/parameters/width/min"),
    (_param("height", choices=[1, 2]), "/parameters/height/input"),  # the workflow's 64 is no choice
    (_param("prefix", type="int"), "/parameters/prefix/input"),
    (_param("color", input="width"), "/parameters/width/input"),  # two parameters set one input
    (_param("width", type="number"), "/parameters/width/type"),
    (_param("width", surprise=1), "/parameters/width"),
    (_param("prefix", min=1), "/parameters/prefix"),  # bounds only for numbers
    (lambda s: s["parameters"]["height"].pop("choices"), "/parameters/height"),
    (_param("width", choices=[8, 16]), "/parameters/width"),  # choices only for enum
    (lambda s: s.pop("workflow"), "/parameters"),
    (lambda s: s["parameters"].update({"9lives": {"node": "1", "input": "width", "type": "int"}}), "/parameters"),
])
def test_bad_declarations_name_where(tmp_path, mutate, where):
    spec = copy_of(KNOBS)
    mutate(spec)
    with pytest.raises(AppError) as err:
        load(tmp_path, spec)
    assert err.value.code == f"invalid_version_spec:knobs:{where}", err.value.detail


def test_a_nan_bound_in_a_spec_is_refused(tmp_path):
    (tmp_path / "knobs.json").write_text(json.dumps(KNOBS).replace('"max": 256', '"max": NaN'))
    with pytest.raises(AppError) as err:
        SpecStore(tmp_path).load("knobs")
    assert err.value.code == "invalid_version_spec:knobs:/parameters/width"


# --- job values, checked before anything runs --------------------------------------------------

@pytest.fixture
def validate(tmp_path):
    settings = Settings.from_env({"VERSIONS_DIR": str(write_versions(tmp_path / "versions")),
                                  "DATA_ROOT": str(tmp_path / "data")})
    runner = JobRunner(settings, SpecStore(settings.versions_dir), provider=None)  # validate needs no ComfyUI
    return lambda payload: runner.validate(payload)[2]


def test_params_and_overrides_are_written_into_a_copy(validate):
    workflow = validate({"version_id": "knobs", "params": {"color": 255, "height": 96.0, "prefix": "x"},
                         "overrides": {"1": {"batch_size": 2}}})
    assert workflow["1"]["inputs"] == {"width": 64, "height": 96, "batch_size": 2, "color": 255}
    assert workflow["2"]["inputs"]["filename_prefix"] == "x"
    assert validate({"version_id": "knobs"})["1"]["inputs"]["color"] == 0x0000FF  # the cached default is untouched
    typed = validate({"version_id": "typed", "params": {"strength": 1, "flag": False, "mode": "slow", "seed": 2**64 - 1}})
    assert typed["1"]["inputs"] == {"strength": 1, "flag": False, "mode": "slow", "image": ["0", 0]}
    own = validate({"version_id": "knobs", "workflow": workflows.image(color=1), "overrides": {"1": {"color": 7}}})
    assert own["1"]["inputs"]["color"] == 7


@pytest.mark.parametrize("payload,code", [
    ({"version_id": "knobs", "params": {"width": 4}}, "invalid_param:width"),
    ({"version_id": "knobs", "params": {"width": 257}}, "invalid_param:width"),
    ({"version_id": "knobs", "params": {"width": 10.5}}, "invalid_param:width"),
    ({"version_id": "knobs", "params": {"width": "100"}}, "invalid_param:width"),
    ({"version_id": "knobs", "params": {"width": True}}, "invalid_param:width"),
    ({"version_id": "knobs", "params": {"color": 10**400}}, "invalid_param:color"),
    ({"version_id": "knobs", "params": {"height": 50}}, "invalid_param:height"),
    ({"version_id": "knobs", "params": {"prefix": 5}}, "invalid_param:prefix"),
    ({"version_id": "typed", "params": {"strength": 1.5}}, "invalid_param:strength"),
    ({"version_id": "typed", "params": {"strength": "0.5"}}, "invalid_param:strength"),
    ({"version_id": "typed", "params": {"flag": 1}}, "invalid_param:flag"),
    ({"version_id": "typed", "params": {"mode": True}}, "invalid_param:mode"),
    ({"version_id": "typed", "params": {"seed": 2**64}}, "invalid_param:seed"),
    ({"version_id": "typed", "params": {"strength": float("nan")}}, "invalid_payload:params"),
    ({"version_id": "typed", "params": {"strength": float("inf")}}, "invalid_payload:params"),
    ({"version_id": "knobs", "params": {"depth": 3}}, "unknown_param:depth"),
    ({"version_id": "demo", "params": {"seed": 3}}, "unknown_param:seed"),
    ({"version_id": "knobs", "params": [1]}, "invalid_payload:params"),
    ({"version_id": "knobs", "params": {"width": 32}, "workflow": workflows.image()}, "params_conflict"),
    ({"version_id": "knobs", "params": {"width": 32}, "workflow_url": "http://127.0.0.1:9/w"}, "params_conflict"),
    ({"version_id": "knobs", "overrides": {"7": {"width": 3}}}, "invalid_override:7"),
    ({"version_id": "knobs", "overrides": {"1": {"depth": 3}}}, "invalid_override:1:depth"),
    ({"version_id": "knobs", "overrides": {"2": {"images": "x"}}}, "invalid_override:2:images"),  # a link
    ({"version_id": "knobs", "overrides": {"1": {"width": ["5", 0]}}}, "invalid_override:1:width"),
    ({"version_id": "knobs", "overrides": {"1": {"width": None}}}, "invalid_override:1:width"),
    ({"version_id": "knobs", "overrides": {"1": {}}}, "invalid_override:1"),
    ({"version_id": "knobs", "overrides": {"1": 5}}, "invalid_override:1"),
    ({"version_id": "knobs", "overrides": ["1"]}, "invalid_payload:overrides"),
    ({"version_id": "knobs", "params": {"width": 32}, "overrides": {"1": {"width": 40}}}, "invalid_override:1:width"),
])
def test_bad_values_are_typed_400s(validate, payload, code):
    with pytest.raises(AppError) as err:
        validate(payload)
    assert err.value.code == code and err.value.status == 400, err.value.detail
    if code.startswith("unknown_param:depth"):
        assert "color, height, prefix, width" in err.value.detail


# --- applied through the runner to a real ComfyUI --------------------------------------------

def png(result):
    return Image.open(io.BytesIO(base64.b64decode(result["base64"])))


@pytest.mark.comfy
def test_params_change_what_the_runner_makes(comfy, tmp_path):
    settings = Settings.from_env({"VERSIONS_DIR": str(write_versions(tmp_path / "versions")),
                                  "DATA_ROOT": str(tmp_path / "data")})

    plain, painted, overridden, own = asyncio.run(runner_support.run_jobs(comfy.url, settings=settings, payloads=[
        {"version_id": "knobs"},
        {"version_id": "knobs", "params": {"color": 0xFF0000, "width": 100, "height": 32, "prefix": "red"}},
        {"version_id": "knobs", "overrides": {"1": {"color": 0x00FF00, "height": 96}}},
        {"version_id": "knobs", "workflow": workflows.image(width=16, height=16, color=1),
         "overrides": {"1": {"color": 0x00FF00}}},
    ]))
    assert png(plain).size == (64, 64) and png(plain).convert("RGB").getpixel((0, 0)) == (0, 0, 255)
    assert png(painted).size == (100, 32) and png(painted).convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    assert painted["outputs"][0]["filename"].startswith("red")
    assert png(overridden).size == (64, 96) and png(overridden).convert("RGB").getpixel((5, 5)) == (0, 255, 0)
    assert png(own).size == (16, 16) and png(own).convert("RGB").getpixel((0, 0)) == (0, 255, 0)
    assert len({r["outputs"][0]["sha256"] for r in (plain, painted, overridden)}) == 3
    # provenance hashes the workflow that ran, params included
    assert plain["provenance"]["workflow_sha256"] != painted["provenance"]["workflow_sha256"]


# --- a real Pod: GET /versions, /run with params ---------------------------------------------

@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    root = tmp_path_factory.mktemp("params-pod")
    pod = start_pod(root, env={"API_TOKEN": TOKEN, "API_WORKERS": "1",
                               "VERSIONS_DIR": str(write_versions(root / "versions"))})
    yield pod
    pod.stop()


def call(pod, method, path, body=None, token=TOKEN):
    return pod.request(method, path, body, headers={"Authorization": f"Bearer {token}"} if token else {})


@pytest.mark.comfy
def test_pod_versions_routes(pod):
    import jsonschema

    status, doc = call(pod, "GET", "/openapi.json")
    status, listing = call(pod, "GET", "/versions")
    assert status == 200, listing
    jsonschema.validate(listing, {**_documented_responses(doc, "/versions", "get", 200), "components": doc["components"]})
    by_id = {v["id"]: v for v in listing["versions"]}
    assert set(by_id) == {"demo", "knobs", "typed"}
    assert by_id["demo"]["installed"] is False and by_id["demo"]["state"] == "available"
    assert by_id["demo"]["parameters"]["width"] == {"type": "int", "default": 512, "min": 1, "max": 4096,
                                                    "node": "1", "input": "width", "description": "Image width in pixels."}
    status, knobs = call(pod, "GET", "/versions/knobs")
    assert status == 200 and knobs == by_id["knobs"]
    jsonschema.validate(knobs, {**_documented_responses(doc, "/versions/{version_id}", "get", 200),
                                "components": doc["components"]})
    assert knobs["description"] == "test version with parameters" and knobs["default_workflow"] is True
    assert knobs["parameters"]["color"]["default"] == 0x0000FF and knobs["parameters"]["height"]["choices"] == [32, 64, 96]
    text = json.dumps(listing)
    assert str(pod.root) not in text and "github.com" not in text and "class_type" not in text  # no paths, URLs, workflow

    assert call(pod, "GET", "/versions/ghost") == (404, {"error": "unknown_version:ghost",
                                                         "detail": "no spec ghost.json in the versions folder"})
    assert call(pod, "GET", "/versions/schema")[1]["error"] == "unknown_version:schema"
    assert call(pod, "GET", "/versions/a..b")[0] == 400
    for path in ("/versions", "/versions/knobs"):
        assert call(pod, "GET", path, token=None)[1]["error"] == "unauthorized"
        assert call(pod, "GET", path, token="wrong")[0] == 401


@pytest.mark.comfy
def test_pod_runs_params_and_refuses_bad_ones_at_submission(pod):
    status, result = call(pod, "POST", "/run", {"version_id": "knobs", "params": {"color": 0xFF0000, "width": 40}})
    assert status == 200, result
    assert png(result).size == (40, 64) and png(result).convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    status, listing = call(pod, "GET", "/jobs?limit=100")
    before = len(listing["jobs"])
    for body, code in [
        ({"version_id": "knobs", "params": {"width": 1000}}, "invalid_param:width"),
        ({"version_id": "knobs", "params": {"width": True}}, "invalid_param:width"),
        ({"version_id": "knobs", "params": {"height": 33}}, "invalid_param:height"),
        ({"version_id": "knobs", "params": {"nope": 1}}, "unknown_param:nope"),
        ({"version_id": "knobs", "params": {"width": 32}, "workflow": workflows.image()}, "params_conflict"),
        ({"version_id": "knobs", "overrides": {"9": {"width": 1}}}, "invalid_override:9"),
        ({"version_id": "knobs", "overrides": {"1": {"depth": 1}}}, "invalid_override:1:depth"),
        ({"version_id": "knobs", "overrides": {"1": {"width": [1, 2]}}, "async": True}, "invalid_override:1:width"),
    ]:
        status, error = call(pod, "POST", "/run", body)
        assert (status, error["error"]) == (400, code), error
    assert len(call(pod, "GET", "/jobs?limit=100")[1]["jobs"]) == before  # nothing was stored
