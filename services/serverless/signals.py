"""SIGTERM and SIGINT in the serverless worker: the job gets its grace, ComfyUI stops, exit 0.

RunPod stops a worker with SIGTERM (tini forwards it) and kills it outright some time later.
What the runpod SDK (1.12) does with the signals decides what is left to us:

- `runpod.serverless.start` first sets SIGINT to `sys.exit(0)`.
- Its production loop (`JobScaler.start`) replaces both handlers with one that sets a flag:
  it fetches no job after its current long-poll to RunPod (a job that poll brings may still
  run), awaits the running job however long it takes, posts its result, and `start` returns
  once its long-polls (job-take, job-stop: RunPod holds them, up to 90 s) are back. The
  handlers stay.
- Its local API (`--rp_serve_api`, uvicorn) takes both over while it serves: it stops
  accepting, waits for open requests (a /runsync running a job) however long they take, then
  puts the previous handlers back and raises the signal again.

So the SDK stops taking jobs by itself but never bounds the running one, and our own handler
sees a signal only outside those loops, when no job can be running. Hence:

- Our handler (before and after the SDK's loops) ends the process at once with status 0: main's
  `finally` then stops ComfyUI. Without it SIGTERM would kill the worker (status 143) and
  leave ComfyUI, which runs in a session of its own, to its parent-death signal.
- While a loop runs, its handler is wrapped, from the SDK's own (main) thread when a job
  starts, the first moment our code runs there: a signal then also starts the worker's grace
  (`Worker.begin_shutdown`), after which the job is interrupted and answers
  `worker_shutdown`. The SDK delivers that answer and returns as it would anyway.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Callable

from services.serverless.worker import Worker

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ShutdownSignals:
    def __init__(self, worker: Worker):
        self.worker = worker
        self._exiting = False

    def install(self) -> None:
        for sig in SIGNALS:
            signal.signal(sig, self._exit)

    def adopt_sdk_handlers(self) -> None:
        """Wrap the handlers the SDK's loop installed (call from its thread, during a job)."""
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers live on the main thread: there is no SDK loop here
        for sig in SIGNALS:
            current = signal.getsignal(sig)
            if callable(current) and current != self._exit and not isinstance(current, _WithGrace):
                signal.signal(sig, _WithGrace(self.worker, current))

    def hold(self) -> None:
        """From now on signals only begin the shutdown: one more would cut stopping ComfyUI short."""
        self._exiting = True
        self.install()

    def _exit(self, signum: int, frame: Any) -> None:
        self.worker.begin_shutdown(signal.Signals(signum).name)
        if not self._exiting:
            self._exiting = True
            raise SystemExit(0)


class _WithGrace:
    """The SDK's handler, which also begins the worker's shutdown."""

    def __init__(self, worker: Worker, sdk_handler: Callable[[int, Any], Any]):
        self.worker = worker
        self.sdk_handler = sdk_handler

    def __call__(self, signum: int, frame: Any) -> None:
        self.worker.begin_shutdown(signal.Signals(signum).name)
        self.sdk_handler(signum, frame)
