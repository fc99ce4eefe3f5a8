"""The appliance's metrics, evaluated at scrape time from state every program shares.

Nothing is counted inside an API worker: jobs and downloads come from the SQLite store, the
phase histograms from the job rows (services/store/stats.py), ComfyUI's starts from each
backend's counter file in its run folder, start-up stages from the programs' ledgers in RUN_DIR
(and each further backend's), the jobs holding each backend from its leases in the store,
ComfyUI, backend, program and GPU state from the health snapshot every worker refreshes each
second (services/api/health.py: gpuwatch's report and supervisord's program list), the models from
the model folders, their evictions from modelsync's counter file in RUN_DIR. So whichever
gunicorn worker answers a scrape, the numbers are the same, and nothing needs
prometheus_client's multiprocess mode.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from services import startup_ledger
from services.comfy import start_count
from services.comfy.backends import Backend
from services.metrics.catalogue import BY_NAME, PHASE_BUCKETS
from services.models import budget
from services.models.listing import list_models
from services.store import stats
from services.store.comfy_state import ComfyStateStore
from services.store.db import Database
from services.store.states import ACTIVE, JobState

GPU_STATES = ("ok", "absent", "unknown", "degraded")
MIB = 2**20
_FAMILIES = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}


def family(name: str) -> Metric:
    """An empty family of a catalogued metric: its type, labels and HELP come from the catalogue."""
    spec = BY_NAME[name]
    return _FAMILIES[spec.kind](name, spec.help, labels=spec.labels)


def single(name: str, value: float) -> Metric:
    """A catalogued metric without labels, with its one value."""
    metric = family(name)
    metric.add_metric([], value)
    return metric


class ApplianceCollector:
    def __init__(self, settings, db: Database, snapshot: Callable[[], dict[str, Any]],
                 backends: Sequence[Backend]):
        self.settings = settings
        self.db = db
        self.snapshot = snapshot
        self.backends = tuple(backends)  # the Pod's ComfyUI backends (services/comfy/backends.py)

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._phases()
        snapshot = self.snapshot()
        yield from self._health(snapshot)
        yield from self._backends(snapshot)
        yield from self._downloads()
        yield self._startup()
        yield from self._models()
        yield single("appliance_model_evictions_total", budget.evictions(self.settings.run_dir))

    def _jobs(self) -> Iterator[Metric]:
        active, finished = family("appliance_jobs"), family("appliance_jobs_finished_total")
        queue = 0
        for state, version, n in stats.job_counts(self.db):
            if state in ACTIVE:
                active.add_metric([state, version], n)
                queue += n
            elif state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
                finished.add_metric([state, version], n)
        yield from (active, finished)
        yield single("appliance_queue_jobs", queue)
        yield single("appliance_queue_max_jobs", self.settings.queue_max_jobs)

    def _phases(self) -> Iterator[Metric]:
        metric = family("appliance_job_phase_seconds")
        for phase, version, cumulative, count, total in stats.phase_histograms(self.db, PHASE_BUCKETS):
            buckets = [(f"{bound:g}", n) for bound, n in zip(PHASE_BUCKETS, cumulative)] + [("+Inf", count)]
            metric.add_metric([phase, version], buckets, total)
        yield metric

    def _health(self, snapshot: dict[str, Any]) -> Iterator[Metric]:
        yield single("appliance_health_ok", int(bool(snapshot.get("ok"))))
        yield single("appliance_comfy_up", int(snapshot.get("comfy", {}).get("state") == "ready"))
        yield single("appliance_comfy_starts_total", sum(start_count.read(b.run_dir) for b in self.backends))
        yield single("appliance_gpu_fault", int(bool(snapshot.get("gpu_fault"))))
        up, uptime = family("appliance_program_up"), family("appliance_program_uptime_seconds")
        for name, program in snapshot.get("programs", {}).items():
            if isinstance(program, dict):  # else {"error": ...}: supervisord did not answer
                running = program["state"] == "RUNNING"
                up.add_metric([name], int(running))
                if running and program.get("uptime") is not None:
                    uptime.add_metric([name], program["uptime"])
        yield from (up, uptime)
        gpu = snapshot.get("gpu", {})
        state = family("appliance_gpu_state")
        for name in GPU_STATES:
            state.add_metric([name], int(gpu.get("state") == name))
        yield state
        yield from self._gpus(gpu.get("gpus") or [])

    def _backends(self, snapshot: dict[str, Any]) -> Iterator[Metric]:
        # The planned backends, not the snapshot's list: before the first health refresh (an
        # empty snapshot) every backend is there, down.
        serving = {v["backend"] for v in snapshot.get("backends", ()) if v.get("ok")}
        loads = ComfyStateStore(self.db).loads()
        up, jobs = family("appliance_backend_up"), family("appliance_backend_jobs")
        starts = family("appliance_backend_starts_total")
        for b in self.backends:
            up.add_metric([str(b.index), b.program, b.gpu or ""], int(b.index in serving))
            jobs.add_metric([str(b.index), b.program], loads.get(b.index, 0))
            starts.add_metric([str(b.index), b.program], start_count.read(b.run_dir))
        yield from (up, jobs, starts)

    def _gpus(self, gpus: list[dict[str, Any]]) -> Iterator[Metric]:
        # nvidia-smi field -> (metric, scale); a field nvidia-smi reported as [N/A] is left out.
        fields = {"utilization_gpu": ("appliance_gpu_utilization_ratio", 0.01),
                  "memory_used_mib": ("appliance_gpu_memory_used_bytes", MIB),
                  "memory_total_mib": ("appliance_gpu_memory_total_bytes", MIB),
                  "temperature_c": ("appliance_gpu_temperature_celsius", 1),
                  "power_draw_w": ("appliance_gpu_power_watts", 1)}
        families = {field: family(name) for field, (name, _) in fields.items()}
        for gpu in gpus:
            labels = [str(gpu.get("index")), str(gpu.get("name"))]
            for field, (_, scale) in fields.items():
                if gpu.get(field) is not None:
                    families[field].add_metric(labels, gpu[field] * scale)
        yield from families.values()

    def _downloads(self) -> Iterator[Metric]:
        count, done, size = (family(n) for n in ("appliance_downloads", "appliance_download_done_bytes",
                                                 "appliance_download_size_bytes"))
        for state, n, bytes_done, bytes_total in stats.download_totals(self.db):
            count.add_metric([state], n)
            done.add_metric([state], bytes_done)
            size.add_metric([state], bytes_total)
        yield from (count, done, size)

    def _startup(self) -> Metric:
        metric = family("appliance_startup_stage_seconds")
        for program, stages in startup_ledger.read_all(self.settings.run_dir).items():
            for stage in stages:
                metric.add_metric([program, stage["stage"]], stage["seconds"])
        # A further backend's ComfyUI keeps its `comfyui` ledger in its own run folder: shown
        # under its program's name (`comfyui-1`, ...).
        for b in self.backends:
            if b.run_dir != self.settings.run_dir:
                for stage in startup_ledger.read_all(b.run_dir).get("comfyui", ()):
                    metric.add_metric([b.program, stage["stage"]], stage["seconds"])
        return metric

    def _models(self) -> Iterator[Metric]:
        count, size = family("appliance_models"), family("appliance_model_bytes")
        for model_type, models in list_models(self.settings).items():
            count.add_metric([model_type], len(models))
            size.add_metric([model_type], sum(m["size"] for m in models))
        yield from (count, size)
