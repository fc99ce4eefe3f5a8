"""gunicorn settings of the Pod API (the `api` program in etc/supervisord.conf).

Uvicorn workers serve the Falcon ASGI app: a synchronous /run waits as a coroutine, so hundreds
can wait while /healthz stays fast (gthread was 7.5 one-second requests/s here, ASGI 51).
Request deadlines are enforced in the app (JOB_TIMEOUT), not by `timeout`, which with these
workers only catches a worker whose event loop is stuck. `graceful_timeout` stays below the
program's `stopwaitsecs` (45) so supervisord never SIGKILLs the master mid-shutdown and
orphans its workers (benoitc/gunicorn#1106).
"""
import os

from services.api.exposure import check_bind
from services.config import load_or_exit, or_exit
from services.startup_ledger import Ledger

# The `api` program's start-up ledger, kept by the master (services/startup_ledger.py).
_ledger = Ledger("api")
_settings = load_or_exit()
_ledger.mark("settings_loaded")
_ledger.persist(_settings.run_dir)
or_exit(lambda: check_bind(_settings))  # closed by default: no token, no public address

bind = f"{_settings.api_host}:{_settings.api_port}"
workers = _settings.api_workers
worker_class = "uvicorn_worker.UvicornWorker"
timeout = 30
graceful_timeout = 30
keepalive = 5
backlog = 2048
# gunicorn 27 opens a control socket under $HOME by default; the Pod needs none.
control_socket_disable = True
# The heartbeat file on a disk-backed filesystem can block a worker (gunicorn#1194).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
pidfile = str(_settings.run_dir / "gunicorn.pid")
accesslog = None
errorlog = "-"
loglevel = "warning" if _settings.log_silent else "info"
proc_name = "appliance-api"


def when_ready(server):
    _ledger.mark("listening")  # the master's sockets are bound; workers boot from here
