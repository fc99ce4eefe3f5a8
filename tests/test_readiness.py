"""Readiness and backpressure on a real Pod (supervisord, two gunicorn workers, the stand-in as
`comfyui`, SQLite on disk): `/readyz` beside `/healthz`, and `/run` refusing new jobs with 503
`queue_full` once QUEUE_MAX_JOBS jobs are queued or running."""
import base64
import concurrent.futures
import time

import jsonschema
import pytest
from nacl.public import PrivateKey

from services.api.jobs import RETRY_AFTER_SECONDS
from services.api.readiness import not_ready
from services.security.envelope import open_reply, seal_request
from services.store.db import Database
from services.store.jobs import JobStore, QueueFull
from tests import raw_http, workflows
from tests.pod_process import start_pod

TOKEN = "ready-Token_7"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUEUE_MAX_JOBS = 2
SERVER_KEY = PrivateKey.generate()


# ---- the rules, without processes ---------------------------------------------------------
READY_SNAPSHOT = {"ok": True, "comfy": {"state": "ready"}, "gpu": {"state": "ok"}, "gpu_fault": None}
# (health snapshot, active jobs, the failing checks)
READINESS = [
    (READY_SNAPSHOT, 0, set()),
    (READY_SNAPSHOT, QUEUE_MAX_JOBS - 1, set()),
    (READY_SNAPSHOT, QUEUE_MAX_JOBS, {"queue_full"}),
    ({}, 0, {"unchecked"}),  # the API worker has just started
    (READY_SNAPSHOT, None, {"unchecked"}),
    ({**READY_SNAPSHOT, "ok": False, "comfy": {"state": "starting", "reason": "comfyui program is STARTING"}}, 0,
     {"comfy_starting"}),
    ({**READY_SNAPSHOT, "ok": False, "comfy": {"state": "down", "reason": "version_not_installed:x"}}, 0,
     {"comfy_down"}),
    ({**READY_SNAPSHOT, "ok": False, "gpu_fault": {"reason": "cuda_error: illegal memory access", "at": 1.0}},
     QUEUE_MAX_JOBS, {"gpu_fault", "queue_full"}),
    ({**READY_SNAPSHOT, "ok": False, "gpu": {"state": "degraded", "reason": "uncorrected ECC errors"}}, 0,
     {"gpu_degraded"}),
    # A multi-GPU Pod whose other GPU is degraded: a backend still serves (services/api/health.py).
    ({**READY_SNAPSHOT, "gpu": {"state": "degraded", "reason": "GPU 1: uncorrected ECC errors"}}, 0, set()),
]


@pytest.mark.parametrize("snapshot,active,failing", READINESS)
def test_readiness_rules(snapshot, active, failing):
    reasons = not_ready(snapshot, active, QUEUE_MAX_JOBS)
    assert set(reasons) == failing and all(reasons.values())


def test_queue_max_jobs_0_is_no_bound():
    assert not_ready(READY_SNAPSHOT, 10**6, 0) == {}


def test_the_store_bounds_active_jobs_but_answers_an_existing_job_id(tmp_path):
    store = JobStore(Database(tmp_path / "state.db"))
    store.create("{}", job_id="a", limit=2)
    store.create("{}", job_id="b", owner="worker", limit=2)  # running counts too
    with pytest.raises(QueueFull) as refused:
        store.create("{}", job_id="c", limit=2)
    assert (refused.value.code, refused.value.status) == ("queue_full", 503) and store.get("c") is None
    assert store.create("{}", job_id="a", limit=2) == (store.get("a"), False)
    store.check_room(2, "a")
    with pytest.raises(QueueFull):
        store.check_room(2)
    store.finish("worker", "b", {})
    assert store.active() == 1 and store.create("{}", job_id="c", limit=2)[1] is True


# ---- a real Pod ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    # Two API workers: the bound holds for the Pod, not per worker. A token: /readyz shows its
    # reasons to token holders only.
    pod = start_pod(tmp_path_factory.mktemp("ready"), env={
        "QUEUE_MAX_JOBS": str(QUEUE_MAX_JOBS), "API_WORKERS": "2", "API_TOKEN": TOKEN,
        "WORKER_PRIVATE_KEY_B64": base64.b64encode(bytes(SERVER_KEY)).decode()})
    yield pod
    pod.stop()


def call(pod, method, path, body=None, auth=True):
    """(status, body, headers) of one request, with the token unless auth=False."""
    headers = AUTH if auth else {}
    if body is None:
        return raw_http.request(pod.api_port, method, path, headers=headers)
    return raw_http.post_json(pod.api_port, path, body, headers=headers)


def wait_ready(pod, ready: bool, auth: bool = True, timeout: float = 30):
    """/readyz's answer once it says `ready` (each API worker refreshes its own every second)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body, _ = call(pod, "GET", "/readyz", auth=auth)
        if body["ready"] is ready:
            assert status == (200 if ready else 503), body
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def wait_state(pod, job_id, states, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        status, job, _ = call(pod, "GET", f"/jobs/{job_id}")
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


@pytest.mark.comfy
def test_ready_when_comfy_answers_and_the_queue_has_room(pod):
    body = wait_ready(pod, True)
    assert body == {"ready": True, "reasons": {}, "queue": {"active": 0, "max": QUEUE_MAX_JOBS}}
    public = wait_ready(pod, True, auth=False)  # public like /healthz, without details
    assert public == {"ready": True}
    status, doc, _ = call(pod, "GET", "/openapi.json")
    for answer in (body, public):
        jsonschema.validate(answer, {**doc["paths"]["/readyz"]["get"]["responses"]["200"]["content"][
            "application/json"]["schema"], "components": doc["components"]})


@pytest.mark.comfy
def test_a_full_queue_refuses_new_jobs_until_it_drains(pod):
    wait_ready(pod, True)
    busy = {"workflow": workflows.sleep_then_save(30, steps=300), "async": True}
    for job_id in ("busy-1", "busy-2"):
        status, accepted, _ = call(pod, "POST", "/run", {**busy, "job_id": job_id})
        assert status == 202, accepted
    stored = sum(call(pod, "GET", "/jobs")[1]["counts"].values())

    # A new job, asynchronous or not, is refused and not stored.
    status, error, headers = call(pod, "POST", "/run", {"workflow": workflows.image(), "async": True, "job_id": "late-1"})
    assert (status, error["error"]) == (503, "queue_full"), error
    assert headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert call(pod, "GET", "/jobs/late-1")[0] == 404
    status, error, headers = call(pod, "POST", "/run", {"workflow": workflows.image()})
    assert (status, error["error"]) == (503, "queue_full") and headers["Retry-After"]
    # So is an encrypted one, and its envelope is not spent: it is sent again below.
    envelope, box = seal_request({"workflow": workflows.image(width=24, height=24)},
                                 base64.b64encode(bytes(SERVER_KEY.public_key)).decode())
    status, error, _ = call(pod, "POST", "/run", envelope)
    assert (status, error["error"]) == (503, "queue_full") and "ciphertext" not in error
    assert sum(call(pod, "GET", "/jobs")[1]["counts"].values()) == stored

    # A retry of an existing job is answered with that job, asynchronously or synchronously.
    status, again, _ = call(pod, "POST", "/run", {**busy, "job_id": "busy-1"})
    assert (status, again["job_id"]) == (202, "busy-1")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(call, pod, "POST", "/run", {**busy, "async": False, "job_id": "busy-2"})
        readiness = wait_ready(pod, False)
        assert set(readiness["reasons"]) == {"queue_full"}
        assert readiness["queue"] == {"active": QUEUE_MAX_JOBS, "max": QUEUE_MAX_JOBS}
        assert wait_ready(pod, False, auth=False) == {"ready": False}

        # Draining: cancelled jobs free their slots.
        for job_id in ("busy-1", "busy-2"):
            assert call(pod, "DELETE", f"/jobs/{job_id}")[0] in (200, 202)
            wait_state(pod, job_id, ("cancelled",))
        status, answer, _ = waiting.result(timeout=30)
        assert status != 503 and answer["job_id"] == "busy-2", answer

    wait_ready(pod, True)
    status, result, _ = call(pod, "POST", "/run", {"workflow": workflows.image(), "job_id": "late-1"})
    assert status == 200 and result["outputs"], result
    status, reply, _ = call(pod, "POST", "/run", envelope)
    assert status == 200 and open_reply(reply, box)["outputs"], reply


@pytest.mark.comfy
def test_not_ready_while_comfy_is_down(pod):
    wait_ready(pod, True)
    assert pod.ctl("stop", "comfyui").returncode == 0
    try:
        body = wait_ready(pod, False)
        assert set(body["reasons"]) == {"comfy_down"} and body["reasons"]["comfy_down"], body
        assert wait_ready(pod, False, auth=False) == {"ready": False}
    finally:
        assert pod.ctl("start", "comfyui").returncode == 0
    assert wait_ready(pod, True)["reasons"] == {}
