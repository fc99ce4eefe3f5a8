"""Where a payload goes: a RunPod Serverless endpoint or a Pod's API; both hand back a `Reply`.

RunPod: `POST <RUNPOD_API_BASE>/<endpoint id>/runsync` (or `/run`), then `GET .../status/<job id>`
while the job is `IN_QUEUE` or `IN_PROGRESS` (runsync itself gives up waiting after about a
minute and answers with the job still in progress). A client-side timeout cancels the job
(`POST .../cancel/<job id>`), so an abandoned job does not hold a GPU. The API key travels only
in the Authorization header, to that base URL.

Pod: `POST <url>/run` with `Authorization: Bearer <API_TOKEN>`; its public key is on `/healthz`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from client import transport
from client.errors import ClientError

RUNPOD_API_BASE = "https://api.runpod.ai/v2"
PENDING = ("IN_QUEUE", "IN_PROGRESS")


@dataclass(frozen=True)
class Reply:
    ok: bool
    body: Any              # the worker's answer: RunPod's `output`, or the Pod's JSON body
    error: str | None      # RunPod's `error` string, or the Pod body's `error`
    job_id: str | None = None


def _refused(status: int, body: Any, where: str) -> ClientError | None:
    """The HTTP statuses that mean the request never reached a worker."""
    detail = body.get("error") or body.get("detail") if isinstance(body, dict) else None
    if status in (401, 403):
        return ClientError("unauthorized", f"{where} refused the credentials (HTTP {status})")
    if status == 404:
        return ClientError("not_found", f"{where} does not exist (HTTP 404)")
    if status == 429:
        return ClientError("rate_limited", f"{where} asks to slow down (HTTP 429)")
    if status >= 500 and not (isinstance(body, dict) and "error" in body):
        return ClientError("runpod_failed", f"{where} answered HTTP {status}" + (f": {detail}" if detail else ""))
    return None


class RunPodEndpoint:
    def __init__(self, endpoint_id: str, api_key: str, *, api_base: str = RUNPOD_API_BASE,
                 sync: bool = True, timeout: float = 600.0, poll_interval: float = 1.0,
                 request_timeout: float = 120.0):
        if not endpoint_id:
            raise ClientError("invalid_endpoint", "set RP_ENDPOINT_ID (the RunPod endpoint id)")
        if not api_key:
            raise ClientError("unauthorized", "set RP_API_KEY (a RunPod API key)")
        self.endpoint_id = endpoint_id
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self.api_base = api_base.rstrip("/")
        self.sync = sync  # runsync; else run, and poll from the start
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout

    def __repr__(self) -> str:  # never the key
        return f"RunPodEndpoint({self.endpoint_id!r}, api_base={self.api_base!r})"

    def public_key(self) -> str:
        raise ClientError("invalid_key", "a RunPod endpoint does not publish its key: set SERVER_PUBLIC_KEY_B64")

    def _url(self, op: str) -> str:
        return f"{self.api_base}/{self.endpoint_id}/{op}"

    def _call(self, method: str, op: str, body: Any = None) -> dict[str, Any]:
        status, answer = transport.call(method, self._url(op), body, headers=self._headers, timeout=self.request_timeout)
        refused = _refused(status, answer, f"RunPod endpoint {self.endpoint_id}")
        if refused is not None:
            raise refused
        if not isinstance(answer, dict) or "status" not in answer:
            raise ClientError("bad_reply", f"RunPod answered {op} without a job status (HTTP {status})")
        return answer

    def send(self, job_input: Any) -> Reply:
        deadline = time.monotonic() + self.timeout
        job = self._call("POST", "runsync" if self.sync else "run", {"input": job_input})
        while job["status"] in PENDING:
            if time.monotonic() + self.poll_interval > deadline:
                self._cancel(job.get("id"))
                raise ClientError("timeout", f"job {job.get('id')} still {job['status']} after {self.timeout:g} s; "
                                  "cancelled")
            time.sleep(self.poll_interval)
            job = self._call("GET", f"status/{job['id']}")
        return _final(job)

    def _cancel(self, job_id: str | None) -> None:
        if job_id:
            try:
                self._call("POST", f"cancel/{job_id}")
            except ClientError:
                pass  # best effort: the timeout is what the caller hears about


def _final(job: dict[str, Any]) -> Reply:
    state, job_id = job["status"], job.get("id")
    if state == "COMPLETED":
        return Reply(True, job.get("output"), None, job_id)
    if state == "FAILED":
        return Reply(False, job.get("output"), job.get("error") or "runpod_failed", job_id)
    if state == "CANCELLED":
        raise ClientError("cancelled", f"RunPod cancelled job {job_id}")
    if state == "TIMED_OUT":
        raise ClientError("timed_out", f"job {job_id} ran past the endpoint's execution timeout")
    raise ClientError("bad_reply", f"RunPod job {job_id} is in an unknown state {state!r}")


class PodEndpoint:
    def __init__(self, url: str, api_token: str = "", *, timeout: float = 600.0):
        if not url:
            raise ClientError("invalid_endpoint", "set POD_URL (the Pod's API URL)")
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"PodEndpoint({self.url!r})"

    def public_key(self) -> str:
        status, body = transport.call("GET", f"{self.url}/healthz", headers=self._headers, timeout=30)
        key = body.get("server_public_key_b64") if isinstance(body, dict) else None
        if not key:
            raise ClientError("encryption_unavailable", f"{self.url}/healthz publishes no server_public_key_b64 "
                              f"(HTTP {status}): the Pod has no WORKER_PRIVATE_KEY_B64")
        return key

    def send(self, body: Any) -> Reply:
        """`/run` answers once the job is done (a Pod holds the request open)."""
        status, answer = transport.call("POST", f"{self.url}/run", body, headers=self._headers, timeout=self.timeout)
        refused = _refused(status, answer, f"the Pod at {self.url}")
        if refused is not None and not (isinstance(answer, dict) and "error" in answer and status != 401):
            raise refused
        if status == 200:
            return Reply(True, answer, None, answer.get("job_id") if isinstance(answer, dict) else None)
        error = answer.get("error") if isinstance(answer, dict) else None
        return Reply(False, answer, error or f"HTTP {status}",
                     answer.get("job_id") if isinstance(answer, dict) else None)
