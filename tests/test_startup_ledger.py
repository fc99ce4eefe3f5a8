"""The start-up ledger (services/startup_ledger.py): what ComfyUI's output says about its start,
the FlashBoot restore heuristic, and the stages of a real Pod and a real serverless worker."""
import json
import time
from pathlib import Path

import pytest

from services import startup_ledger
from services.comfy.startup_log import StartupLog
from services.startup_ledger import Ledger, looks_restored, restore_gap
from tests import workflows

REAL_LOG = Path(__file__).parent / "fixtures" / "comfy" / "startup_log.txt"
# ComfyUI's own line format (nodes.py, init_external_custom_nodes).
COMFY_IMPORT_LINE = "{:6.1f} seconds{}: {}"


def feed_all(lines):
    log, found = StartupLog(), []
    for line in lines:
        found.extend(log.feed(line))
    return found


# ---- ComfyUI's output ---------------------------------------------------------------------
def test_a_recorded_real_comfyui_start_gives_its_stages_once_each():
    found = feed_all(REAL_LOG.read_text().splitlines())
    assert [stage for stage, _ in found] == ["custom_nodes_imported", "comfy_listening", "first_model_loaded",
                                             "first_prompt_executed"]
    fields = dict(found)
    assert fields["custom_nodes_imported"]["custom_nodes"] == [
        {"path": "COMFY_HOME/custom_nodes/websocket_image_save.py", "seconds": 0.0, "failed": False}]
    assert fields["first_model_loaded"] == {"first_model": "SD1ClipModel"}


@pytest.mark.parametrize("blank_lines", [True, False], ids=["as_printed", "blank_lines_dropped"])
def test_import_times_with_a_failed_node(blank_lines):
    block = ["", "Import times for custom nodes:",
             COMFY_IMPORT_LINE.format(0.04, "", "/c/custom_nodes/websocket_image_save.py"),
             COMFY_IMPORT_LINE.format(2.43, " (IMPORT FAILED)", "/c/custom_nodes/broken node"),
             COMFY_IMPORT_LINE.format(12.0, "", "/c/custom_nodes/ComfyUI-VideoHelperSuite"),
             "", "Starting server", ""]
    found = feed_all([line for line in block if line or blank_lines])
    assert found[0] == ("custom_nodes_imported", {"custom_nodes": [
        {"path": "/c/custom_nodes/websocket_image_save.py", "seconds": 0.0, "failed": False},
        {"path": "/c/custom_nodes/broken node", "seconds": 2.4, "failed": True},
        {"path": "/c/custom_nodes/ComfyUI-VideoHelperSuite", "seconds": 12.0, "failed": False}]})


def test_loaded_partially_counts_and_lines_in_other_formats_are_ignored():
    found = feed_all(["Requested to load WAN21", "loaded partially 9000.0 8000.0 0", "Import times: none",
                      "seconds: nothing", "Requested to load AutoencoderKL", "loaded completely 1 2 True"])
    assert found == [("first_model_loaded", {"first_model": "WAN21"})]


# ---- the FlashBoot heuristic --------------------------------------------------------------
def test_a_process_that_ran_all_along_is_not_restored():
    # Started at 1000.0 (wall); our code ran from 1000.3; an hour later the clocks still agree
    # to within NTP's slew (0.5 s), and the kernel task is as old as it was.
    gap = restore_gap(1000.3, 50.0, 4600.3 + 0.5, 3650.0, created_now=1000.0)
    assert gap == pytest.approx(0.5) and not looks_restored(gap, 3600.0)


def test_a_vm_snapshot_restore_shows_as_a_clock_gap():
    # Frozen for 2 hours: the wall clock counts them, the restored monotonic clock does not.
    gap = restore_gap(1000.3, 50.0, 1000.3 + 60 + 7200, 50.0 + 60, created_now=1000.0)
    assert gap == pytest.approx(7200) and looks_restored(gap, 60)


def test_a_criu_restore_on_the_same_host_shows_as_a_task_younger_than_its_code():
    # Both clocks ran on (same host); the kernel task is the restore's, 2 hours after our code.
    gap = restore_gap(1000.3, 50.0, 8300.3, 7350.0, created_now=8200.0)
    assert gap == pytest.approx(7199.7) and looks_restored(gap, 7300.0)


def test_a_long_lived_worker_may_drift_without_counting_as_restored():
    assert not looks_restored(60.0, 10 * 86400)   # 60 s over 10 days: slew, not a snapshot
    assert looks_restored(60.0, 600)


def test_a_restored_ledger_says_so_and_later_stages_leave_the_frozen_time_out():
    clock = {"wall": 1000.3, "mono": 50.0}
    ledger = Ledger("serverless", clock=lambda: clock["wall"], monotonic=lambda: clock["mono"],
                    created=lambda pid: 1000.0)
    clock["wall"], clock["mono"] = 1002.3, 52.0
    ledger.mark("settings_loaded")
    assert not ledger.check_restored()
    clock["wall"], clock["mono"] = 1002.3 + 7200 + 1, 53.0   # frozen 7200 s, then 1 s more
    # Ran 0.3 s before our code, 3 s of code, then (below) 4 s after the restore: 7.3 s.
    assert ledger.check_restored() and not ledger.check_restored()   # reported once
    clock["wall"], clock["mono"] = clock["wall"] + 4, 57.0
    ledger.mark("restored_job_done")
    data = ledger.snapshot()
    assert data["restored"] is True and data["restore_gap_seconds"] == pytest.approx(7200, abs=0.1)
    assert data["stages"] == [{"stage": "process_start", "seconds": 0.0}, {"stage": "settings_loaded", "seconds": 2.3},
                              {"stage": "restored_job_done", "seconds": 7.3}]


# ---- files, and stages added by other processes --------------------------------------------
def test_mark_for_touches_only_the_ledger_of_that_pid_and_each_stage_once(tmp_path):
    ledger = Ledger("comfyui")
    ledger.mark("settings_loaded")
    ledger.persist(tmp_path)
    assert not startup_ledger.mark_for(tmp_path, "comfyui", ledger.pid + 1, "comfy_answering")
    assert startup_ledger.mark_for(tmp_path, "comfyui", ledger.pid, "comfy_answering")
    assert not startup_ledger.mark_for(tmp_path, "comfyui", ledger.pid, "comfy_answering")
    assert not startup_ledger.mark_for(tmp_path, "nothing", ledger.pid, "comfy_answering")
    stages = startup_ledger.read_all(tmp_path)["comfyui"]
    assert [s["stage"] for s in stages] == ["process_start", "settings_loaded", "comfy_answering"]
    assert all(set(s) == {"stage", "seconds"} for s in stages)
    assert [s["seconds"] for s in stages] == sorted(s["seconds"] for s in stages)
    # Interpreter start and imports come before our first line: counted, so > 0.
    assert stages[1]["seconds"] > 0


def stage_names(stages):
    return [s["stage"] for s in stages]


def assert_ordered(stages):
    seconds = [s["seconds"] for s in stages]
    assert seconds == sorted(seconds) and seconds[0] == 0.0, stages


# ---- a real Pod ---------------------------------------------------------------------------
pod_token = "startup-ledger-token"


@pytest.mark.comfy
def test_a_pod_shows_each_programs_start_up_stages(tmp_path):
    from tests.pod_process import start_pod
    (tmp_path / "pod" / "ComfyUI" / "custom_nodes" / "my_node").mkdir(parents=True)
    started = time.monotonic()
    pod = start_pod(tmp_path / "pod", env={"API_TOKEN": pod_token})
    auth = {"Authorization": f"Bearer {pod_token}"}
    try:
        healthy_seconds = time.monotonic() - started
        status, result = pod.request("POST", "/run", {"workflow": workflows.image()}, headers=auth)
        assert status == 200, result
        deadline = time.monotonic() + 15
        while True:   # the log forwarder and the refresher catch up within a second or two
            status, body = pod.request("GET", "/healthz", headers=auth)
            comfy = body["startup"].get("comfyui", {})
            if {"comfy_answering", "first_prompt_executed"} <= set(stage_names(comfy.get("stages", []))):
                break
            assert time.monotonic() < deadline, json.dumps(body["startup"], indent=1)
            time.sleep(0.3)
        ledgers = body["startup"]
        print(f"pod healthy after {healthy_seconds:.1f} s; comfyui stages: "
              + ", ".join(f"{s['stage']}={s['seconds']}" for s in comfy["stages"]))
        assert comfy["pid"] == pod.pid("comfyui") and comfy["restored"] is False
        names = stage_names(comfy["stages"])
        assert names[:4] == ["process_start", "settings_loaded", "prepared", "exec"]
        assert {"custom_nodes_imported", "comfy_listening", "comfy_answering", "first_prompt_executed"} <= set(names)
        assert names.index("exec") < names.index("comfy_answering") < names.index("first_prompt_executed")
        assert names.index("custom_nodes_imported") < names.index("comfy_listening")
        assert comfy["custom_nodes"] == [{"path": str(tmp_path / "pod" / "ComfyUI" / "custom_nodes" / "my_node"),
                                          "seconds": 0.0, "failed": False}]
        assert stage_names(ledgers["api"]["stages"]) == ["process_start", "settings_loaded", "listening"]
        assert stage_names(ledgers["gpuwatch"]["stages"]) == ["process_start", "settings_loaded", "first_probe"]
        assert stage_names(ledgers["modelsync"]["stages"]) == ["process_start", "settings_loaded", "store_opened"]
        for ledger in ledgers.values():
            assert_ordered(ledger["stages"])
        # The read API for /metrics: the same stages, straight from RUN_DIR.
        assert startup_ledger.read_all(tmp_path / "pod" / "data" / "run") == {
            program: [{"stage": s["stage"], "seconds": s["seconds"]} for s in ledger["stages"]]
            for program, ledger in ledgers.items()}
        status, public = pod.request("GET", "/healthz")
        assert "startup" not in public and set(public) == {"ok", "server_public_key_b64"}
    finally:
        pod.stop()


# ---- a real serverless worker -------------------------------------------------------------
@pytest.mark.comfy
def test_the_first_serverless_job_reports_the_start_and_the_second_does_not(tmp_path):
    from tests.test_serverless import Handler
    (tmp_path / "ComfyUI" / "custom_nodes").mkdir(parents=True)
    (tmp_path / "ComfyUI" / "custom_nodes" / "my_node.py").write_text("")
    handler = Handler(tmp_path)
    try:
        first = handler.runsync({"version_id": "demo", "workflow": workflows.image()})
        second = handler.runsync({"version_id": "demo", "workflow": workflows.image(color=1)})
    finally:
        handler.stop()
    assert first["status"] == "COMPLETED" and second["status"] == "COMPLETED", (first, second)
    startup = first["output"]["startup"]
    print("serverless stages: " + ", ".join(f"{s['stage']}={s['seconds']}" for s in startup["stages"]))
    names = stage_names(startup["stages"])
    assert names[:2] == ["process_start", "settings_loaded"] and names[-1] == "first_job_done"
    assert {"comfy_starting", "custom_nodes_imported", "comfy_listening", "comfy_answering",
            "first_job_received", "first_prompt_executed"} <= set(names)
    assert names.index("comfy_starting") < names.index("comfy_listening") < names.index("first_prompt_executed")
    assert_ordered(startup["stages"])
    assert startup["restored"] is False and startup["program"] == "serverless"
    assert startup["custom_nodes"] == [{"path": str(tmp_path / "ComfyUI" / "custom_nodes" / "my_node.py"),
                                        "seconds": 0.0, "failed": False}]
    assert "startup" not in second["output"]
    logged = [json.loads(line) for line in handler.log_path.read_text().splitlines()
              if line.startswith("{") and '"event": "startup"' in line]
    assert len(logged) == 1 and logged[0]["stages"] == startup["stages"]
