"""`Idempotency-Key` on `POST /run`, against a real Pod (supervisord, gunicorn with two workers,
the stand-in as ComfyUI, SQLite on disk): replays get the same job and it runs once, another
body under a used key is 409, a key that disagrees with `job_id` is 400."""
import base64
import hashlib
import sqlite3
import time

import pytest
from nacl.public import PrivateKey

from services.api.idempotency import job_id_for, request_sha256
from services.security.envelope import seal_request
from tests import workflows
from tests.pod_process import start_pod

SERVER_KEY_B64 = base64.b64encode(bytes(PrivateKey.generate())).decode()


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    pod = start_pod(tmp_path_factory.mktemp("pod"), env={"WORKER_PRIVATE_KEY_B64": SERVER_KEY_B64, "API_WORKERS": "2"})
    yield pod
    pod.stop()


def rows(pod, job_id):
    """The job's rows as the store holds them (read-only: the Pod's programs own the file)."""
    db = pod.root / "data" / "state" / "appliance.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))]


def run(pod, body, key=None):
    return pod.request("POST", "/run", body, headers={"Idempotency-Key": key} if key is not None else None)


def wait_job(pod, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = pod.request("GET", f"/jobs/{job_id}")[1]
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise TimeoutError(job)


def test_a_repeated_key_with_the_same_body_gets_the_same_job_run_once(pod):
    body = {"workflow": workflows.image(color=21)}
    status, first = run(pod, body, "order-7f3a")
    assert status == 200 and first["job_id"] == "order-7f3a"
    for _ in range(2):  # a retry after a lost answer: the job, its result the first one
        status, again = run(pod, body, "order-7f3a")
        assert status == 200 and again["job_id"] == "order-7f3a" and again["state"] == "succeeded"
        assert again["result"]["prompt_id"] == first["prompt_id"]
    [row] = rows(pod, "order-7f3a")
    assert (row["attempts"], row["comfy_attempts"]) == (1, 1)  # ran once
    assert row["request_sha256"] == request_sha256(body)


def test_an_async_replay_gets_the_accepted_job(pod):
    body = {"workflow": workflows.sleep_then_save(1, steps=10), "async": True}
    key = "client:retry/2026-12-01T18:00:00Z#1"  # not a job id: mapped to one by its hash
    status, accepted = run(pod, body, key)
    assert status == 202 and accepted["job_id"] == job_id_for(key)
    assert accepted["job_id"] == "ik-" + hashlib.sha256(key.encode()).hexdigest()[:48]
    status, again = run(pod, body, f'"{key}"')  # the Structured Fields spelling is the same key
    assert status == 202 and again["job_id"] == accepted["job_id"]
    assert wait_job(pod, accepted["job_id"])["state"] == "succeeded"
    status, done = run(pod, {k: v for k, v in body.items() if k != "async"}, key)  # async says how, not what
    assert status == 200 and done["job_id"] == accepted["job_id"] and done["state"] == "succeeded"
    [row] = rows(pod, accepted["job_id"])
    assert row["comfy_attempts"] == 1


def test_the_same_key_with_another_body_is_a_conflict(pod):
    status, first = run(pod, {"workflow": workflows.image(color=22)}, "conflict-1")
    assert status == 200
    status, error = run(pod, {"workflow": workflows.image(color=23)}, "conflict-1")
    assert status == 409 and error["error"] == "idempotency_conflict" and error["job_id"] == "conflict-1"
    status, job = run(pod, {"workflow": workflows.image(color=22), "async": True}, "conflict-1")
    assert status == 202 and job["job_id"] == "conflict-1"  # the same body: `async` is not part of it
    [row] = rows(pod, "conflict-1")
    assert row["comfy_attempts"] == 1 and row["request_sha256"] == request_sha256({"workflow": workflows.image(color=22)})


def test_key_and_job_id_must_agree_and_bad_keys_are_refused(pod):
    body = {"workflow": workflows.image(color=24)}
    status, error = run(pod, {**body, "job_id": "other"}, "mine-1")
    assert (status, error["error"]) == (400, "invalid_payload:idempotency_key")
    assert rows(pod, "mine-1") == [] and rows(pod, "other") == []
    status, job = run(pod, {**body, "job_id": "mine-1"}, "mine-1")  # both, naming the same job
    assert status == 200 and job["job_id"] == "mine-1"
    for bad in ("x" * 256, "two words", "", '""', "caf\u00e9"):
        status, error = run(pod, body, bad.encode("utf-8").decode("latin-1"))
        assert (status, error["error"]) == (400, "invalid_payload:idempotency_key"), bad


def test_an_envelope_is_compared_as_sent(pod):
    public = pod.request("GET", "/healthz")[1]["server_public_key_b64"]
    envelope, _box = seal_request({"workflow": workflows.image(color=25)}, public)
    status, sealed = run(pod, envelope, "sealed-1")
    assert status == 200 and set(sealed) == {"encrypted", "nonce", "ciphertext"}
    status, again = run(pod, envelope, "sealed-1")  # the same envelope again: its job, not a replay refusal
    assert status == 200 and again["job_id"] == "sealed-1" and again["state"] == "succeeded"
    resealed, _ = seal_request({"workflow": workflows.image(color=25)}, public)  # new epk and nonce
    status, error = run(pod, resealed, "sealed-1")
    assert (status, error["error"]) == (409, "idempotency_conflict")
    [row] = rows(pod, "sealed-1")
    assert row["comfy_attempts"] == 1 and row["request_sha256"] == request_sha256(envelope)
