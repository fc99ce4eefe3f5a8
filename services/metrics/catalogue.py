"""Every metric `/metrics` serves: its name, type, labels and meaning, in one place.

The collector (services/metrics/collector.py) takes its HELP text from here and refuses to emit
a name missing from it; README's metrics table is generated from it (scripts/sync_readme_tables.py),
so what is documented and what is served cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

# Seconds, for every phase of a job: the stand-in's milliseconds up to a video job's hour.
PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str          # counter | gauge | histogram (Prometheus types)
    labels: tuple[str, ...]
    help: str


METRICS: tuple[Metric, ...] = (
    Metric("appliance_jobs", "gauge", ("state", "version"),
           "Jobs queued or running now. `version` is empty where the store does not know it (an encrypted "
           "payload, or one that relies on DEFAULT_VERSION_ID)."),
    Metric("appliance_jobs_finished_total", "counter", ("state", "version"),
           "Jobs that ended, by final state (`succeeded`, `failed`, `cancelled`); counted from the job store, "
           "so it survives restarts of the API."),
    Metric("appliance_queue_jobs", "gauge", (),
           "Jobs queued or running, all API workers together: what QUEUE_MAX_JOBS bounds."),
    Metric("appliance_queue_max_jobs", "gauge", (), "QUEUE_MAX_JOBS (0: no bound)."),
    Metric("appliance_job_phase_seconds", "histogram", ("phase", "version"),
           "Time a job spent in each phase: `queue` (accepted to started, every job that started), and for "
           "succeeded jobs the runner's `models` (verify/fetch the version's models), `comfy_ready` (waiting "
           "for ComfyUI to run the version), `execute` (ComfyUI ran the prompt) and `deliver` (outputs "
           "returned or uploaded)."),
    Metric("appliance_comfy_up", "gauge", (), "1 while ComfyUI answers (`/healthz` `comfy.state` is `ready`), else 0. With several "
           "backends: a serving one's ComfyUI, else backend 0's (per backend: `appliance_backend_up`)."),
    Metric("appliance_comfy_starts_total", "counter", (),
           "Times a ComfyUI program started (crash recoveries, hang kills and version switches included), all "
           "backends together (on a one-GPU Pod: the `comfyui` program): its restarts are the increase."),
    Metric("appliance_backend_up", "gauge", ("backend", "program", "gpu"),
           "1 while the ComfyUI backend can take a job (`/healthz` `backends[].ok`: it answers, no GPU fault is "
           "latched, its GPU is not `degraded`), else 0; one per backend (COMFY_GPUS). `gpu` is its "
           "`CUDA_VISIBLE_DEVICES` entry, empty when the machine chooses."),
    Metric("appliance_backend_jobs", "gauge", ("backend", "program"),
           "Jobs holding the backend now (their leases: one running in ComfyUI, the next waiting in its queue)."),
    Metric("appliance_backend_starts_total", "counter", ("backend", "program"),
           "Times the backend's ComfyUI program started: which GPU's ComfyUI restarts (their sum is "
           "`appliance_comfy_starts_total`)."),
    Metric("appliance_health_ok", "gauge", (), "1 while `/healthz` answers 200, else 0."),
    Metric("appliance_gpu_fault", "gauge", (), "1 while a GPU fault is latched (`gpu_fault`), else 0. With several "
           "backends: a serving one's, else backend 0's (per backend: `appliance_backend_up`)."),
    Metric("appliance_program_up", "gauge", ("program",), "1 while supervisord reports the program RUNNING, else 0."),
    Metric("appliance_program_uptime_seconds", "gauge", ("program",),
           "Seconds since supervisord last started the program, while it runs."),
    Metric("appliance_gpu_state", "gauge", ("state",),
           "gpuwatch's verdict, one series per state (`ok`, `absent`, `unknown`, `degraded`), 1 for the current one."),
    Metric("appliance_gpu_utilization_ratio", "gauge", ("gpu", "name"), "GPU busy time, 0 to 1 (nvidia-smi)."),
    Metric("appliance_gpu_memory_used_bytes", "gauge", ("gpu", "name"), "GPU memory in use."),
    Metric("appliance_gpu_memory_total_bytes", "gauge", ("gpu", "name"), "GPU memory in all."),
    Metric("appliance_gpu_temperature_celsius", "gauge", ("gpu", "name"), "GPU core temperature."),
    Metric("appliance_gpu_power_watts", "gauge", ("gpu", "name"), "GPU power draw."),
    Metric("appliance_downloads", "gauge", ("state",), "Model downloads in the store, by state."),
    Metric("appliance_download_done_bytes", "gauge", ("state",), "Bytes downloaded so far, by download state."),
    Metric("appliance_download_size_bytes", "gauge", ("state",),
           "Expected size of the downloads whose size is known, by state."),
    Metric("appliance_startup_stage_seconds", "gauge", ("program", "stage"),
           "When each start-up stage of a program's latest start was reached, in seconds since its process "
           "began (the start-up ledger, services/startup_ledger.py)."),
    Metric("appliance_models", "gauge", ("type",), "Model files ComfyUI can load (as `/models/ls` lists them), by type."),
    Metric("appliance_model_bytes", "gauge", ("type",), "Bytes of those model files, by type."),
    Metric("appliance_model_evictions_total", "counter", (),
           "Models `modelsync` evicted from the cache to keep MODEL_CACHE_MAX_BYTES (least recently used first; "
           "counted in RUN_DIR, so it restarts with the Pod)."),
)
BY_NAME = {metric.name: metric for metric in METRICS}


def markdown_table() -> str:
    rows = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    for m in METRICS:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "–"
        rows.append(f"| `{m.name}` | {m.kind} | {labels} | {m.help} |")
    return "\n".join(rows)
