"""`/metrics`' per-backend series (a Pod with one ComfyUI per GPU), from the collector fed a
health snapshot, the backends' run folders and the store's leases: no Pod is started (the real
scrape of a one-backend Pod is tests/test_metrics.py)."""
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services import startup_ledger
from services.comfy import backends, start_count
from services.config import Settings
from services.metrics.collector import ApplianceCollector
from services.store.comfy_state import ComfyStateStore
from services.store.db import Database


def scrape(settings, db, snapshot, planned) -> dict[tuple, float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ApplianceCollector(settings, db, lambda: snapshot, planned))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def view(index, ok, state="ready"):
    return {"backend": index, "program": "comfyui" if index == 0 else f"comfyui-{index}", "ok": ok,
            "comfy": {"state": state}, "gpu_fault": None}


def test_each_backend_has_its_up_jobs_starts_and_startup_stages(tmp_path):
    settings = Settings.from_env({"DATA_ROOT": str(tmp_path), "COMFY_GPUS": "2,5"})
    planned = backends.plan(settings)
    db = Database(settings.state_db)
    for b in planned:
        b.run_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        start_count.record(planned[0].run_dir)
    for _ in range(3):
        start_count.record(planned[1].run_dir)
    # Backend 1's ComfyUI is this test process: its ledger, as services.comfyexec writes it.
    startup_ledger.Ledger("comfyui", planned[1].run_dir).mark("settings_loaded")
    state = ComfyStateStore(db)
    state.set_runtime("demo", 1)
    assert state.acquire("worker-a", "demo", [1]) == ("ok", 1)
    assert state.acquire("worker-b", "demo", [1]) == ("ok", 1)
    # Backend 0 lost its GPU; backend 1 serves, so the Pod does (and `comfy` shows backend 1).
    snapshot = {"ok": True, "comfy": {"state": "ready"}, "gpu_fault": None,
                "backends": [view(0, False, state="down"), view(1, True)]}

    scraped = scrape(settings, db, snapshot, planned)

    def value(name, **labels):
        return scraped[(name, tuple(sorted(labels.items())))]
    assert value("appliance_backend_up", backend="0", program="comfyui", gpu="2") == 0
    assert value("appliance_backend_up", backend="1", program="comfyui-1", gpu="5") == 1
    assert value("appliance_backend_jobs", backend="0", program="comfyui") == 0
    assert value("appliance_backend_jobs", backend="1", program="comfyui-1") == 2
    assert value("appliance_backend_starts_total", backend="0", program="comfyui") == 2
    assert value("appliance_backend_starts_total", backend="1", program="comfyui-1") == 3
    assert value("appliance_comfy_starts_total") == 5
    assert value("appliance_health_ok") == 1 and value("appliance_comfy_up") == 1
    assert value("appliance_startup_stage_seconds", program="comfyui-1", stage="settings_loaded") >= 0


def test_one_backend_reads_as_a_one_gpu_pod_always_did(tmp_path):
    settings = Settings.from_env({"DATA_ROOT": str(tmp_path), "COMFY_GPUS": "1"})
    planned = backends.plan(settings)
    db = Database(settings.state_db)
    start_count.record(settings.run_dir)
    # Before the first health refresh the snapshot is empty: the backend is there, down.
    scraped = scrape(settings, db, {}, planned)
    assert scraped[("appliance_comfy_starts_total", ())] == 1
    assert scraped[("appliance_backend_up", (("backend", "0"), ("gpu", "0"), ("program", "comfyui")))] == 0
    assert {labels for name, labels in scraped if name == "appliance_backend_jobs"} == {
        (("backend", "0"), ("program", "comfyui"))}
    assert not any(name == "appliance_startup_stage_seconds" for name, _ in scraped)
