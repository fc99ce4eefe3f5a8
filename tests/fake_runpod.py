"""A fake RunPod job server on 127.0.0.1 for the SDK's real production worker loop.

Serves `job-take` (one queued job, or 204 after a 1 s long-poll: the SDK re-polls a 204 at
once), records what the worker posts to `job-done`/`job-stream`, and answers the `job-stop`
long-poll with the ids a test asked to stop.
"""
from __future__ import annotations

import json
import queue
import threading
import time
import urllib.parse

from tests.http_server import LocalServer, send


class FakeRunPod:
    def __init__(self):
        self.server = LocalServer()
        self.jobs: queue.Queue = queue.Queue()
        self.posts: list[dict] = []
        self.to_stop: list[str] = []
        self._lock = threading.Lock()
        self.server.httpd.routes = self  # LocalServer asks routes.get(path): see get() below

    # LocalServer looks routes up with .get(path); answer by prefix instead of exact path.
    def get(self, path: str):
        if "/job-take/" in path:
            return self._take
        if "/job-done/" in path or "/job-stream/" in path:
            return self._done
        if "/job-stop/" in path:
            return self._stop
        return None

    def __enter__(self) -> "FakeRunPod":
        self.server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)

    def env(self, worker_id: str = "w1") -> dict[str, str]:
        base = self.server.url
        return {"RUNPOD_POD_ID": worker_id,
                "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=t",
                "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=t",
                "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=t",
                "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true"}

    def add_job(self, job_id: str, job_input) -> None:
        self.jobs.put({"id": job_id, "input": job_input})

    def stop(self, job_id: str) -> None:
        with self._lock:
            self.to_stop.append(job_id)

    def results(self, job_id: str) -> list[dict]:
        with self._lock:
            return [p["body"] for p in self.posts if p["job_id"] == job_id]

    def final(self, job_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for body in self.results(job_id):
                if body.get("status") != "IN_PROGRESS":
                    return body
            time.sleep(0.1)
        raise TimeoutError(f"no result for {job_id}: {self.results(job_id)}")

    def _take(self, req) -> None:
        try:
            job = self.jobs.get(timeout=1.0)
        except queue.Empty:
            send(req, 204, b"")
            return
        send(req, 200, json.dumps(job).encode(), "application/json")

    def _done(self, req) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length).decode()
        try:
            body = json.loads(raw)
        except ValueError:
            body = json.loads(urllib.parse.unquote_plus(raw))
        job_id = urllib.parse.urlsplit(req.path).path.rstrip("/").rsplit("/", 1)[-1]
        with self._lock:
            self.posts.append({"job_id": job_id, "body": body})
        send(req, 200, b"{}", "application/json")

    def _stop(self, req) -> None:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            with self._lock:
                ids, self.to_stop = self.to_stop, []
            if ids:
                send(req, 200, json.dumps({"jobsToStop": ids}).encode(), "application/json")
                return
            time.sleep(0.05)
        send(req, 204, b"")
