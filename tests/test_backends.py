"""Multi-GPU Pods without processes: how COMFY_GPUS plans the backends, how the store routes a
job to one (services/store/comfy_state.py), how each backend reads its own GPU's health."""
import time

import pytest

from services.comfy import backends
from services.config import Settings, SettingsError
from services.gpu import state as gpu_state
from services.pod import comfy_programs
from services.store.comfy_state import LEASE_SECONDS, SWITCH_STALE_SECONDS, ComfyStateStore
from services.store.db import Database
from tests.pod_process import REPO_ROOT


def settings(**env) -> Settings:
    return Settings.from_env({"COMFY_PORT": "8188", "RUN_DIR": "/run/app", **env})


def dev_with(tmp_path, *names):
    for name in names:
        (tmp_path / name).touch()
    return tmp_path


# ---- COMFY_GPUS -----------------------------------------------------------------------------
@pytest.mark.parametrize("raw,environ,nodes,gpus", [
    ("auto", {}, (), [None]),                                                  # no GPU: one, unpinned
    ("auto", {}, ("nvidiactl", "nvidia0", "nvidia1", "nvidia-uvm"), ["0", "1"]),
    ("auto", {"CUDA_VISIBLE_DEVICES": "2,3"}, ("nvidia0",), ["2", "3"]),        # the user's choice wins
    ("auto", {"CUDA_VISIBLE_DEVICES": "GPU-aa-1"}, (), ["GPU-aa-1"]),
    ("3", {}, (), ["0", "1", "2"]),
    ("2,5", {}, ("nvidia0",), ["2", "5"]),
    ("4,", {}, (), ["4"]),
    ("GPU-89ee31ae-536d, GPU-1", {}, (), ["GPU-89ee31ae-536d", "GPU-1"]),
])
def test_comfy_gpus_plans_one_backend_per_gpu(tmp_path, raw, environ, nodes, gpus):
    planned = backends.plan(settings(COMFY_GPUS=raw), dev=dev_with(tmp_path, *nodes), environ=environ)
    assert [b.gpu for b in planned] == gpus
    first = planned[0]
    assert (first.program, first.port, str(first.run_dir), first.url) == (
        "comfyui", 8188, "/run/app", "http://127.0.0.1:8188")  # a one-GPU Pod's ComfyUI, unchanged
    for b in planned[1:]:
        assert (b.program, b.port, str(b.run_dir)) == (f"comfyui-{b.index}", 8188 + b.index, f"/run/app/comfyui-{b.index}")
        assert b.temp_name == b.program  # ComfyUI empties its temp folder at start: one each
    assert first.temp_name is None


def test_a_backend_is_pinned_to_its_gpu_in_nvidia_smi_order():
    one, two = backends.plan(settings(COMFY_GPUS="2"))
    assert two.env() == {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert backends.plan(settings(COMFY_GPUS="auto"), dev=REPO_ROOT / "no-dev", environ={})[0].env() == {}
    assert two.settings(settings()).comfy_port == 8189 and str(two.settings(settings()).run_dir) == "/run/app/comfyui-1"


def test_an_external_comfyui_is_one_backend():
    planned = backends.plan(settings(COMFY_GPUS="4", COMFY_URL="http://10.0.0.5:8188"))
    assert [(b.program, b.url) for b in planned] == [("comfyui", "http://10.0.0.5:8188")]


@pytest.mark.parametrize("raw", ["0", "65", "two", "1,1", "0,x", ",", "-1,"])
def test_a_wrong_comfy_gpus_is_refused(raw):
    with pytest.raises(SettingsError, match="COMFY_GPUS"):
        settings(COMFY_GPUS=raw)


def test_supervisord_gets_one_comfyui_program_per_backend():
    import configparser

    text = comfy_programs.render((REPO_ROOT / "etc" / comfy_programs.TEMPLATE).read_text(),
                                 backends.plan(settings(COMFY_GPUS="3")))
    conf = configparser.RawConfigParser()
    conf.read_string(text)
    assert conf.sections() == ["program:comfyui", "program:comfyui-1", "program:comfyui-2"]
    assert conf.get("program:comfyui-2", "command").endswith("-m services.comfyexec --backend 2")
    assert conf.get("program:comfyui-2", "stdout_logfile") == "%(ENV_LOG_DIR)s/comfyui-2.log"
    assert conf.get("program:comfyui", "stdout_logfile") == "%(ENV_LOG_DIR)s/comfyui.log"


# ---- per-GPU health ---------------------------------------------------------------------------
GPUS = [{"index": 0, "uuid": "GPU-a", "problems": []},
        {"index": 1, "uuid": "GPU-b", "problems": ["3 uncorrected ECC errors"]}]


@pytest.mark.parametrize("snapshot,gpu,expected", [
    ({"state": "degraded", "reason": "GPU 1: ...", "gpus": GPUS}, "0", "ok"),       # another GPU's problem
    ({"state": "degraded", "reason": "GPU 1: ...", "gpus": GPUS}, "1", "degraded"),
    ({"state": "degraded", "reason": "GPU 1: ...", "gpus": GPUS}, "GPU-b", "degraded"),
    ({"state": "degraded", "reason": "GPU 1: ...", "gpus": GPUS}, None, "degraded"),  # unpinned: the machine's
    ({"state": "degraded", "reason": "nvidia-smi hung", "gpus": []}, "0", "degraded"),  # the whole machine
    ({"state": "absent", "reason": "no GPU listed", "gpus": []}, "0", "absent"),
    ({"state": "ok", "reason": "", "gpus": GPUS[:1]}, "3", "unknown"),
])
def test_each_backend_reads_its_own_gpu(snapshot, gpu, expected):
    assert gpu_state.for_gpu(snapshot, gpu)["state"] == expected


# ---- routing --------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    db = Database(tmp_path / "state.db")
    store = ComfyStateStore(db)
    yield store
    db.close()


def on(store, **runtimes):
    for backend, label in runtimes.items():
        store.set_runtime(label, int(backend.removeprefix("b")))


def test_an_idle_backend_on_the_jobs_version_comes_first(store):
    on(store, b0="A", b1="A", b2="B")
    assert store.acquire("w1", "A", [0, 1, 2]) == ("ok", 0)
    assert store.acquire("w2", "A", [0, 1, 2]) == ("ok", 1)  # spread: 0 is busy, 1 idle
    assert store.acquire("w1", "B", [0, 1, 2]) == ("ok", 2)  # the one already on B
    assert store.loads() == {0: 1, 1: 1, 2: 1}


def test_a_busy_backend_on_the_version_is_fed_before_an_idle_one_is_switched(store):
    on(store, b0="A", b1="B")
    assert store.acquire("w1", "A", [0, 1]) == ("ok", 0)
    # One job runs, one waits in ComfyUI's queue: the GPU never idles between prompts.
    assert store.acquire("w1", "A", [0, 1]) == ("ok", 0)
    # Fed: the third switches the idle backend rather than wait behind two.
    assert store.acquire("w2", "A", [0, 1]) == ("switch", 1)
    # 1 switches away from B, 0 is busy on A: a job for B drains 0 (with jobs for A arriving all
    # the time nothing would ever be idle, and B would starve).
    assert store.acquire("w3", "B", [0, 1]) == ("switch", 0)
    store.finish_switch("w2", "A", 1)
    assert store.runtime(1) == "A" and store.loads() == {0: 2, 1: 1}
    assert store.acquire("w3", "A", [0, 1]) == ("ok", 1)


def test_with_every_backend_busy_a_job_queues_on_its_version_or_drains_one(store):
    on(store, b0="A", b1="A")
    for _ in range(4):
        store.acquire("w1", "A", [0, 1])
    assert store.acquire("w1", "A", [0, 1]) == ("ok", 0)  # beyond the feed depth: the least loaded
    verdict = store.acquire("w2", "B", [0, 1])
    assert verdict == ("switch", 1)  # nobody on B, nothing idle: drain the least loaded
    assert store.in_use_elsewhere("B", 1) == 1
    # While 1 drains, no new job of A goes there.
    assert store.acquire("w1", "A", [0, 1]) == ("ok", 0)
    assert store.acquire("w3", "B", [0, 1]) == ("wait", None)


def test_one_backend_is_the_single_comfyuis_rule(store):
    on(store, b0="A")
    assert store.acquire("w1", "A", [0]) == ("ok", 0)
    assert store.acquire("w2", "A", [0]) == ("ok", 0)
    assert store.acquire("w1", "A", [0]) == ("ok", 0)  # shared however many
    assert store.acquire("w2", "B", [0]) == ("switch", 0)
    assert store.acquire("w1", "A", [0]) == ("wait", None)  # the drain has begun
    store.abort_switch("w2", 0)
    assert store.acquire("w1", "A", [0]) == ("ok", 0)


def test_only_routable_backends_get_jobs_and_an_adopted_job_goes_back_to_its_own(store):
    on(store, b0="A", b1="A")
    assert store.acquire("w1", "A", [1]) == ("ok", 1)  # 0 is out of rotation (a degraded GPU)
    assert store.acquire("w1", "A", [0, 1]) == ("ok", 0)
    assert store.acquire("w2", "A", [0, 1], prefer=1) == ("ok", 1)  # it has the job's prompt
    assert store.acquire("w2", "B", [0, 1], prefer=1)[0] == "switch"  # another version: no preference


def test_dead_workers_leases_and_switches_lapse(store):
    on(store, b0="A", b1="A")
    assert store.acquire("dead", "A", [0, 1]) == ("ok", 0)
    assert store.acquire("dead", "B", [0, 1]) == ("switch", 1)
    with store.db.write() as conn:
        conn.execute("UPDATE comfy_leases SET heartbeat_at = ?", (time.time() - LEASE_SECONDS - 1,))
        conn.execute("UPDATE comfy_backends SET switch_heartbeat = ?", (time.time() - SWITCH_STALE_SECONDS - 1,))
    assert store.loads() == {}
    assert store.acquire("w1", "A", [0, 1]) == ("ok", 0)
    assert store.acquire("w1", "B", [0, 1]) == ("switch", 1)  # the dead switcher's claim is gone
    store.release("w1", 0)
    assert store.loads() == {}
