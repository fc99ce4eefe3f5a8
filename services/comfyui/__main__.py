"""The `comfyui` program of Pod mode: prepare, then become ComfyUI (exec).

supervisord then supervises ComfyUI itself: its pid, its signals, its output. Before the exec
this program checks what it can (`comfy_init_failed:<reason>` and a quick exit, so supervisord
marks it FATAL after its retries) and rate-limits restarts: supervisord respawns a process
that dies after `startsecs` at once, forever (Supervisor#1285), so a ComfyUI that crashes
shortly after start waits longer before each new try (services/pod/restarts.py).
"""
from __future__ import annotations

import os
import sys
import time

from services import config, logs
from services.comfy.launcher import ComfyLauncher
from services.errors import AppError
from services.pod import restarts
from services.pod import runtime as runtime_file
from services.store.comfy_state import ComfyStateStore
from services.store.db import Database

log = logs.get("comfyui")


def main() -> None:
    settings = config.load_or_exit()
    logs.configure_from(settings)
    runtime = runtime_file.wanted(settings)
    # Recorded before the checks: the API must know what runs even when it failed to start.
    ComfyStateStore(Database(settings.state_db)).set_runtime(runtime.label)
    launcher = ComfyLauncher.from_settings(settings, comfy_home=runtime.comfy_home, python=runtime.python,
                                           extra_args=runtime.args)
    try:
        argv = launcher.prepare()
    except AppError as exc:
        print(exc.one_line(), file=sys.stderr, flush=True)
        sys.exit(1)
    delay = restarts.next_delay(settings.run_dir)
    if delay:
        log.warning("comfy_restart_backoff", seconds=delay)
        time.sleep(delay)
    log.info("comfy_exec", runtime=runtime.label, comfy_home=str(runtime.comfy_home))
    sys.stdout.flush()
    os.chdir(launcher.comfy_home)
    os.environ["PYTHONUNBUFFERED"] = "1"
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
