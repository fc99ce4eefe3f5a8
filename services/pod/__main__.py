"""`python -m services.pod`: start Pod mode (LAUNCH_MODE=api) under supervisord.

Validates the settings first (a wrong value, or a public API_HOST without API_TOKEN, stops
here with one line), installs the version ComfyUI will run when it is missing (locally or with
AUTO_INSTALL_VERSIONS=1: see services/pod/first_run.py; a failure stops here with one line
too), creates the folders, writes one ComfyUI program per GPU (services/pod/comfy_programs.py),
exports the values etc/supervisord.conf expands (`%(ENV_...)s`), then execs supervisord in the foreground, so in the container it is PID 1's direct child (or
PID 1) and reaps zombies.
supervisord gets no secret: they go to a 0600 file that only the programs granted them read
(services/pod/grant.py, services/secret_env.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services import config, logs, secret_env
from services.api.exposure import check_bind
from services.webhooks import startup as webhook_startup
from services.errors import AppError
from services.comfy import backends
from services.pod import comfy_programs, first_run, grant, start_failure

DEFAULT_CONF = config.REPO_ROOT / "etc" / "supervisord.conf"


def supervisor_env(settings: config.Settings) -> dict[str, str]:
    return {"APPLIANCE_PYTHON": sys.executable, "LOG_DIR": str(settings.log_dir),
            "RUN_DIR": str(settings.run_dir), "DATA_ROOT": str(settings.data_root),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(config.REPO_ROOT), os.environ.get("PYTHONPATH")]))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.pod", description=__doc__)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONF, help="supervisord config file")
    args = parser.parse_args(argv)
    settings = config.load_or_exit()
    config.or_exit(lambda: check_bind(settings))  # before the install: a refused start should not take minutes
    config.or_exit(lambda: webhook_startup.check_settings(settings))
    logs.configure_from(settings)
    try:
        first_run.ensure_installed(settings)
    except AppError as exc:
        print(f"error: {' '.join(exc.one_line().split())}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # the installer has removed its half-built tree on the way out
        print("error: interrupted before supervisord started", file=sys.stderr)
        sys.exit(130)
    private = args.config.parent.parent / ".run"  # beside supervisord's socket, off the volume
    for folder in (settings.log_dir, settings.run_dir, settings.data_root, private):
        folder.mkdir(parents=True, exist_ok=True)
    pod_backends = backends.plan(settings)
    for backend in pod_backends:
        backend.run_dir.mkdir(parents=True, exist_ok=True)
        start_failure.clear(backend.run_dir)  # a reason left by an earlier boot says nothing about this one
    comfy_programs.write(args.config.parent, private, pod_backends)
    secrets_file = private / "secrets.json"
    grant.write(secrets_file, os.environ)
    env = {**secret_env.env_for("supervisord", os.environ), **supervisor_env(settings), "LAUNCH_MODE": "api",
           grant.FILE_ENV: str(secrets_file)}
    os.execve(sys.executable, [sys.executable, "-m", "supervisor.supervisord", "-c", str(args.config)], env)


if __name__ == "__main__":
    main()
