import json

import pytest

from services.errors import AppError
from services.model_types import ALL_TYPES
from services.versions.spec import SCHEMA_PATH, SpecStore

GOOD = {
    "id": "v1",
    "comfyui": {"repo": "https://github.com/Comfy-Org/ComfyUI.git", "commit": "a" * 40},
    "custom_nodes": [{"name": "n1", "repo": "file:///tmp/n1", "commit": "b" * 40, "requirements": ["rembg==2.0"]}],
    "models": [{"name": "m.safetensors", "type": "loras", "url": "https://x/m", "size": 3, "sha256": "c" * 64}],
}


@pytest.fixture
def store(tmp_path):
    return SpecStore(tmp_path)


def write(store, vid, data):
    path = store.versions_dir / f"{vid}.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_shipped_specs_load():
    from services.config import REPO_ROOT
    shipped = SpecStore(REPO_ROOT / "versions")
    assert {"demo", "wan22-fast"} <= set(shipped.ids())
    demo = shipped.load("demo")
    assert demo.models == () and demo.workflow
    wan = shipped.load("wan22-fast")
    assert len(wan.models) >= 4
    assert all(m.url.startswith("https://huggingface.co/Comfy-Org/") for m in wan.models)
    assert all(m.sha256 and m.size for m in wan.models)


def test_loads_and_types_a_spec(store):
    write(store, "v1", GOOD)
    spec = store.load("v1")
    assert spec.comfyui.commit == "a" * 40
    assert spec.custom_nodes[0].requirements == ("rembg==2.0",)
    assert spec.models[0].type == "loras" and spec.models[0].size == 3


@pytest.mark.parametrize("vid", ["../etc/passwd", "a/b", "..", ".hidden", "a..b", "x" * 65, "", "a\x00b"])
def test_unsafe_ids_are_refused_before_any_path_is_built(store, vid):
    with pytest.raises(AppError) as err:
        store.load(vid)
    assert err.value.prefix in ("invalid_version_id", "invalid_payload")


def test_unknown_version(store):
    with pytest.raises(AppError) as err:
        store.load("nope")
    assert err.value.code == "unknown_version:nope"


@pytest.mark.parametrize("mutate,where", [
    (lambda d: d["comfyui"].pop("commit"), "/comfyui"),
    (lambda d: d["comfyui"].update(commit="main"), "/comfyui/commit"),
    (lambda d: d["models"][0].update(type="nonsense"), "/models/0/type"),
    (lambda d: d["models"][0].update(sha256="xyz"), "/models/0/sha256"),
    (lambda d: d["models"][0].update(name="../evil"), "/models/0/name"),
    (lambda d: d["models"][0].update(url="ftp://x"), "/models/0/url"),
    (lambda d: d.update(id="other"), "/id"),
    (lambda d: d.update(surprise=1), "/"),
])
def test_invalid_specs_name_where(store, mutate, where):
    data = json.loads(json.dumps(GOOD))
    mutate(data)
    write(store, "v1", data)
    with pytest.raises(AppError) as err:
        store.load("v1")
    assert err.value.code == f"invalid_version_spec:v1:{where}"


def test_spec_that_is_not_json(store):
    write(store, "v1", "{oops")
    with pytest.raises(AppError) as err:
        store.load("v1")
    assert err.value.code.startswith("invalid_version_spec:v1:line 1")


def test_cache_follows_file_changes(store):
    path = write(store, "v1", GOOD)
    assert store.load("v1") is store.load("v1")
    changed = dict(GOOD, description="changed on disk")
    path.write_text(json.dumps(changed, indent=1))
    assert store.load("v1").description == "changed on disk"


def test_schema_model_types_match_the_code():
    schema = json.loads(SCHEMA_PATH.read_text())
    assert set(schema["$defs"]["model"]["properties"]["type"]["enum"]) == set(ALL_TYPES)
