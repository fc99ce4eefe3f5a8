"""The `comfyui` program of Pod mode: prepare, then become ComfyUI (exec).

supervisord then supervises ComfyUI itself: its pid, its signals, its output. Before the exec
this program checks what it can (`comfy_init_failed:<reason>` and a quick exit, so supervisord
marks it FATAL after its retries) and rate-limits restarts: supervisord respawns a process
that dies after `startsecs` at once, forever (Supervisor#1285), so a ComfyUI that crashes
shortly after start waits longer before each new try.
"""
from __future__ import annotations

import json
import os
import sys
import time

from services import config, logs
from services.comfy.launcher import ComfyLauncher
from services.errors import AppError
from services.pod import runtime as runtime_file
from services.store.comfy_state import ComfyStateStore
from services.store.db import Database

log = logs.get("comfyui")

HEALTHY_RUN_SECONDS = 120.0  # a run at least this long resets the back-off
MAX_BACKOFF_SECONDS = 60.0


def _backoff(run_dir) -> float:
    """Seconds to wait before this start, from the history of recent starts."""
    path = run_dir / "comfyui-starts.json"
    try:
        starts = json.loads(path.read_text())
    except (OSError, ValueError):
        starts = []
    now = time.time()
    times = starts + [now]
    # Consecutive runs shorter than a healthy one, newest first, are a crash loop.
    quick = 0
    for earlier, later in zip(reversed(times[:-1]), reversed(times[1:])):
        if later - earlier >= HEALTHY_RUN_SECONDS:
            break
        quick += 1
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(times[-20:]))
    return 0.0 if quick < 2 else min(2.0 ** (quick - 1), MAX_BACKOFF_SECONDS)


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
    delay = _backoff(settings.run_dir)
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
