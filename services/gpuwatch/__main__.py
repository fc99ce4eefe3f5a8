"""The `gpuwatch` program: probes the GPUs and the host every GPU_POLL_INTERVAL seconds and
publishes a snapshot for /healthz (services/gpu/state.py). A probe that hangs is cut off after
GPU_PROBE_TIMEOUT, so a wedged driver shows as `unknown` instead of freezing health checks, and
as `degraded` once nvidia-smi has hung on every probe for a minute (state.escalate_hang).
"""
from __future__ import annotations

import signal
import threading

from services import config, logs
from services.gpu import state
from services.startup_ledger import Ledger

log = logs.get("gpuwatch")


def main() -> None:
    ledger = Ledger("gpuwatch")
    settings = config.load_or_exit()
    logs.configure_from(settings)
    ledger.mark("settings_loaded")
    ledger.persist(settings.run_dir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    disks = [settings.data_root, settings.models_dir]
    last_state = None
    hung_since = None
    log.info("gpuwatch_started", interval=settings.gpu_poll_interval)
    while not stop.is_set():
        snapshot = state.probe(settings.nvidia_smi, settings.gpu_probe_timeout, disks)
        hung_since = state.escalate_hang(snapshot, hung_since)
        state.write(settings.run_dir, snapshot)
        ledger.mark("first_probe")  # once: later marks of a recorded stage are no-ops
        if snapshot["state"] != last_state:
            log.info("gpu_state", state=snapshot["state"], reason=snapshot.get("reason", ""))
            last_state = snapshot["state"]
        stop.wait(settings.gpu_poll_interval)


if __name__ == "__main__":
    main()
