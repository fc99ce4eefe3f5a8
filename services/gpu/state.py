"""The GPU/host health snapshot that `gpuwatch` writes and `/healthz` and the handler read.

One JSON file in RUN_DIR, replaced atomically, so readers never see half a snapshot and never
run nvidia-smi themselves.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil

from services import atomic_file
from services.gpu import faults, nvidia_smi

FILENAME = "gpu.json"
# How long nvidia-smi must hang on every probe before the GPU counts as `degraded`. One probe that
# hangs is `unknown`: nvidia-smi can be slow (a driver without persistence mode initialises on
# every call, a busy host), and /healthz must not fail on it. A wedged driver (Xid 79, a GPU that
# fell off the bus) hangs it for good.
HUNG_DEGRADED_AFTER = 60.0


def probe(nvidia_smi_cmd: str, timeout: float, disk_paths: list[Path]) -> dict[str, Any]:
    snapshot: dict[str, Any] = {"checked_at": round(time.time(), 3), "host": host_stats(disk_paths)}
    try:
        gpus = nvidia_smi.parse_gpus(nvidia_smi.run([nvidia_smi_cmd, *nvidia_smi.QUERY_GPU[1:]], timeout))
        apps = nvidia_smi.parse_apps(nvidia_smi.run([nvidia_smi_cmd, *nvidia_smi.QUERY_APPS[1:]], timeout))
    except nvidia_smi.ProbeFailed as exc:
        # A failure whose words name a GPU fault ("GPU is lost", "Driver/library version
        # mismatch") is one, whatever its exit status.
        fault = faults.classify(exc.reason)
        degraded = fault is not None and fault.code == "gpu_fault"
        snapshot.update(state="degraded" if degraded else exc.state, reason=exc.reason, gpus=[], apps=[])
        if exc.hung:
            snapshot["hung"] = True
        return snapshot
    except ValueError as exc:
        snapshot.update(state="unknown", reason=f"unreadable nvidia-smi output: {exc}", gpus=[], apps=[])
        return snapshot
    problems = [f"GPU {g.index}: {p}" for g in gpus for p in g.problems()]
    snapshot.update(state="degraded" if problems else ("ok" if gpus else "absent"),
                    reason="; ".join(problems) if problems else ("" if gpus else "no GPU listed"),
                    gpus=[g.as_dict() for g in gpus], apps=[a.__dict__ for a in apps])
    return snapshot


def escalate_hang(snapshot: dict[str, Any], hung_since: float | None) -> float | None:
    """Mark `snapshot` `degraded` once every probe has hung for HUNG_DEGRADED_AFTER seconds;
    returns when the hanging began (the next call's `hung_since`), None after a probe answered."""
    if not snapshot.get("hung"):
        return None
    since = snapshot["checked_at"] if hung_since is None else hung_since
    hung_for = snapshot["checked_at"] - since
    if hung_for >= HUNG_DEGRADED_AFTER:
        snapshot.update(state="degraded", reason=f"{snapshot['reason']}, on every probe for {hung_for:.0f} s")
    return since


def host_stats(disk_paths: list[Path]) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    disks = {}
    for path in disk_paths:
        try:
            usage = psutil.disk_usage(str(path))
        except OSError:
            continue
        disks[str(path)] = {"free": usage.free, "total": usage.total}
    return {"cpu_percent": psutil.cpu_percent(interval=None), "ram_total": memory.total,
            "ram_available": memory.available, "disks": disks}


def for_gpu(snapshot: dict[str, Any], gpu: str | None) -> dict[str, Any]:
    """`{state, reason}` of one GPU (a CUDA_VISIBLE_DEVICES entry: an index or a UUID) in a
    snapshot: `degraded` when it has problems of its own, else the machine's state, unless that
    state comes from another GPU's problems only (each backend judges its own GPU). `gpu` None:
    the machine's."""
    listed = snapshot.get("gpus") or []
    if gpu is None or not listed:
        return {"state": snapshot.get("state"), "reason": snapshot.get("reason")}
    mine = next((g for g in listed if str(g.get("index")) == gpu or g.get("uuid") == gpu), None)
    if mine is None:
        return {"state": "unknown", "reason": f"nvidia-smi does not list GPU {gpu}"}
    problems = mine.get("problems") or []
    if problems:
        return {"state": "degraded", "reason": "; ".join(f"GPU {mine['index']}: {p}" for p in problems)}
    return {"state": "ok", "reason": ""}


def write(run_dir: Path, snapshot: dict[str, Any]) -> None:
    atomic_file.write_text(run_dir / FILENAME, json.dumps(snapshot))


def read(run_dir: Path, max_age: float) -> dict[str, Any]:
    """The last snapshot, or `unknown` when there is none or it is older than `max_age`."""
    try:
        snapshot = json.loads((run_dir / FILENAME).read_text())
    except (OSError, ValueError):
        return {"state": "unknown", "reason": "gpuwatch has not reported yet"}
    if time.time() - snapshot.get("checked_at", 0) > max_age:
        snapshot = {**snapshot, "state": "unknown", "reason": "gpuwatch report is stale"}
    return snapshot
