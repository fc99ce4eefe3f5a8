"""The `comfyui` programs of Pod mode: prepare, then become ComfyUI (exec).

`--backend N` names which of the Pod's ComfyUI backends this is (services/comfy/backends.py):
its port, GPU and run folder; 0, the default, is the `comfyui` program of a one-GPU Pod.

supervisord then supervises ComfyUI itself: its pid, its signals, its output. Before the exec
this program checks what it can (`comfy_init_failed:<reason>`, `version_not_installed:<id>`,
recorded for /healthz, and a quick exit, so supervisord marks it FATAL after its retries) and
rate-limits restarts: supervisord respawns a process that dies after `startsecs` at once,
forever (Supervisor#1285), so a ComfyUI that crashes shortly after start waits longer before
each new try (services/comfy/backoff.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from services import config, logs
from services.startup_ledger import Ledger
from services.comfy.launcher import CHILD_UMASK, ComfyLauncher, child_env
from services.errors import AppError
from services.gpu import fault_latch
from services.comfy import backends, backoff, start_count
from services.comfy import runtime as runtime_file
from services.comfy.runtime import Runtime
from services.pod import start_failure
from services.store.comfy_state import ComfyStateStore
from services.store.db import Database

log = logs.get("comfyui")


def prepare(settings, backend: backends.Backend) -> tuple[Runtime, list[str]]:
    """The runtime to run and ComfyUI's argv; AppError when it cannot start. `settings` are the
    backend's own (its port and run folder)."""
    runtime = runtime_file.wanted(settings)
    # Recorded before the checks: the API must know what runs even when it failed to start.
    ComfyStateStore(Database(settings.state_db)).set_runtime(runtime.label, backend.index)
    runtime_file.check_installed(settings, runtime)
    launcher = ComfyLauncher.from_settings(settings, comfy_home=runtime.comfy_home, python=runtime.python,
                                           extra_args=runtime.args, temp_name=backend.temp_name)
    return runtime, launcher.prepare()


def main(argv: list[str] | None = None) -> None:
    # Before anything slow; ComfyUI keeps this pid, so the API and the log forwarder add its
    # later stages (comfy_listening, comfy_answering, custom nodes, …) to this same ledger.
    ledger = Ledger("comfyui")
    parser = argparse.ArgumentParser(prog="python -m services.comfyexec", description=__doc__)
    parser.add_argument("--backend", type=int, default=0, help="which of the Pod's ComfyUI backends")
    args = parser.parse_args(argv)
    settings = config.load_or_exit()
    planned = backends.plan(settings)
    if not 0 <= args.backend < len(planned):
        print(f"config error: backend {args.backend} is not one of COMFY_GPUS's {len(planned)}", file=sys.stderr)
        sys.exit(2)
    backend = planned[args.backend]
    settings = backend.settings(settings)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    logs.configure_from(settings)
    ledger.mark("settings_loaded")
    ledger.persist(settings.run_dir)
    start_count.record(settings.run_dir)  # every start, a failed one too: /metrics' appliance_comfy_starts_total
    try:
        runtime, argv = prepare(settings, backend)
    except AppError as exc:
        start_failure.record(settings.run_dir, exc.one_line())
        print(exc.one_line(), file=sys.stderr, flush=True)
        sys.exit(1)
    ledger.mark("prepared")
    start_failure.clear(settings.run_dir)
    # A new process has a fresh CUDA context: a fault latched on the old one no longer holds.
    fault_latch.clear(settings.run_dir)
    delay = backoff.next_delay(settings.run_dir)
    if delay:
        log.warning("comfy_restart_backoff", seconds=delay)
        time.sleep(delay)
    log.info("comfy_exec", backend=backend.index, gpu=backend.gpu, runtime=runtime.label,
             comfy_home=str(runtime.comfy_home), args=argv[3:])
    sys.stdout.flush()
    os.chdir(runtime.comfy_home)
    os.umask(CHILD_UMASK)
    ledger.mark("exec")  # after the back-off sleep: the gap between `prepared` and `exec` is it
    # Exec'd with no secret (custom nodes run in there), even if this program was given some.
    os.execve(argv[0], argv, {**child_env(), **backend.env()})


if __name__ == "__main__":
    main()
