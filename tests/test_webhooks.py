"""Signed webhooks (Pod mode) against a real Pod and a real receiver on 127.0.0.1.

The receiver checks every call twice: with the `standardwebhooks` package (what a customer's
receiver would use) and with the Standard Webhooks algorithm written out here independently.
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest
import standardwebhooks
from nacl.public import PrivateKey

from services.api.webhooks import job_webhook
from services.config import REPO_ROOT, Settings, SettingsError
from services.errors import AppError
from services.net.policy import FetchPolicy
from services.security.envelope import open_reply, seal_request
from services.store.db import Database
from services.store.jobs import JobStore
from services.store.webhooks import WebhookStore
from services.webhooks import sender, signing
from services.webhooks.startup import check_settings
from tests import workflows
from tests.http_server import LocalServer, send
from tests.pod_process import start_pod

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
SERVER_KEY = PrivateKey.generate()
RETRY_BASE = 1.0  # seconds: the test Pod's back-off is 1, 2, 4, ... s
MAX_BYTES = 1024  # an image job's base64 result is larger: its webhook carries a reference

# The Standard Webhooks specification's published example (the reference libraries test it).
VECTOR = {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
          "timestamp": 1614265330, "body": b'{"test": 2432232314}',
          "signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}


def independent_verify(secret: str, headers: dict, body: bytes, tolerance: float = 300) -> bool:
    """The receiver's side of the specification, written out without the appliance's code."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(stamp)) > tolerance:
        return False
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest())
    return any(hmac.compare_digest(sig.partition(",")[2].encode(), expected)
               for sig in headers["webhook-signature"].split() if sig.startswith("v1,"))


# ---- units ------------------------------------------------------------------------------

def test_signer_reproduces_the_specification_test_vector():
    key = signing.key_bytes(VECTOR["secret"])
    assert signing.signature(key, VECTOR["id"], VECTOR["timestamp"], VECTOR["body"]) == VECTOR["signature"]
    # The prefix is optional, as in the reference libraries; both verifiers agree.
    assert signing.key_bytes(VECTOR["secret"].removeprefix("whsec_")) == key
    headers = signing.headers(key, VECTOR["id"], VECTOR["timestamp"], VECTOR["body"])
    assert independent_verify(VECTOR["secret"], headers, VECTOR["body"], tolerance=float("inf"))


def test_secret_and_url_settings_are_checked_at_start():
    for bad in ("not base64!", "whsec_" + base64.b64encode(b"short").decode(), "c2VjcmV0"):
        with pytest.raises(SettingsError) as info:
            Settings.from_env({"WEBHOOK_SECRET": bad})
        assert bad not in str(info.value) and "<secret>" in str(info.value)  # the value is never echoed
    assert Settings.from_env({"WEBHOOK_SECRET": SECRET}).public_dict()["WEBHOOK_SECRET"] == "<set>"
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET is empty"):
        check_settings(Settings.from_env({"WEBHOOK_URL": "https://hooks.example.com/x"}))
    with pytest.raises(SettingsError, match="url_forbidden:link_local"):
        check_settings(Settings.from_env({"WEBHOOK_URL": "http://169.254.169.254/", "WEBHOOK_SECRET": SECRET}))
    check_settings(Settings.from_env({"WEBHOOK_URL": "https://hooks.example.com/x", "WEBHOOK_SECRET": SECRET}))
    # The Pod's entry point refuses before anything starts, like any bad setting.
    env = {**os.environ, "WEBHOOK_URL": "https://hooks.example.com/x", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("WEBHOOK_SECRET", None)
    proc = subprocess.run([sys.executable, "-m", "services.pod"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "config error: WEBHOOK_URL is set but WEBHOOK_SECRET is empty" in proc.stderr


def test_a_webhook_without_a_secret_to_sign_it_is_refused():
    settings = Settings.from_env({})
    with pytest.raises(AppError) as info:
        asyncio.run(job_webhook(settings, FetchPolicy(), "https://hooks.example.com/x", False))
    assert (info.value.code, info.value.status) == ("webhooks_unavailable", 400)
    assert asyncio.run(job_webhook(settings, FetchPolicy(), None, False)) is None  # none asked: none owed


def test_backoff_doubles_and_is_capped():
    assert [sender.backoff(n, 10) for n in range(1, 6)] == [10, 20, 40, 80, 160]
    assert sender.backoff(30, 10) == sender.MAX_DELAY


def test_a_job_owes_its_webhook_in_the_commit_that_ends_it(tmp_path):
    db = Database(tmp_path / "state.db")
    jobs, hooks = JobStore(db), WebhookStore(db, lease=30, max_attempts=3)
    plain, _ = jobs.create("{}", owner="w1", webhook="https://hooks.example.com/a")
    silent, _ = jobs.create("{}", owner="w1")
    queued, _ = jobs.create("{}", webhook="https://hooks.example.com/b")
    assert hooks.claim("w2") is None  # nothing ended yet
    jobs.finish("w1", plain.id, {"ok": 1})
    jobs.fail("w1", silent.id, "execution_error:X", "boom")  # no webhook: no row
    jobs.request_cancel(queued.id)  # cancelled while queued: ended, so owed too
    rows = [hooks.claim("w2"), hooks.claim("w2")]
    assert {r.job_id for r in rows} == {plain.id, queued.id} and hooks.claim("w2") is None
    first = rows[0]
    assert hooks.retry("w2", first.id, 0.3, 500, "http_500")
    assert hooks.claim("w2") is None  # backing off
    time.sleep(0.35)
    again = hooks.claim("w2")
    assert (again.id, again.attempts) == (first.id, 2)
    db.close()


# ---- against a real Pod ------------------------------------------------------------------

class Receiver:
    """Webhook endpoints on 127.0.0.1; each path answers from its script (then 200) and records
    (monotonic time, headers, body, verified) for every call."""

    def __init__(self, server: LocalServer):
        self.server = server
        self.calls: dict[str, list] = {}
        self.lock = threading.Lock()

    def endpoint(self, statuses=(), answer=None) -> tuple[str, str]:
        """A new path; `answer(n)` (the call's index) may replace the script."""
        path = f"/hook-{uuid.uuid4().hex[:8]}"
        script = list(statuses)
        self.calls[path] = []

        def handle(req):
            body = req.rfile.read(int(req.headers.get("Content-Length", 0)))
            headers = {k.lower(): v for k, v in req.headers.items()}
            verified = independent_verify(SECRET, headers, body)
            standardwebhooks.Webhook(SECRET).verify(body, headers)  # raises on a bad signature
            with self.lock:
                calls = self.calls[path]
                calls.append((time.monotonic(), headers, body, verified))
                status = answer(len(calls) - 1) if answer else (script.pop(0) if script else 200)
            send(req, status, b"{}", "application/json")

        return self.server.route(path, handle), path

    def wait(self, path: str, count: int, timeout: float = 60) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.calls[path]) >= count:
                return list(self.calls[path])
            time.sleep(0.05)
        raise TimeoutError(f"{path}: {len(self.calls[path])} calls, wanted {count}")


@pytest.fixture(scope="module")
def receiver():
    with LocalServer() as server:
        yield Receiver(server)


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    pod = start_pod(tmp_path_factory.mktemp("pod"), env={
        "WEBHOOK_SECRET": SECRET, "WEBHOOK_RETRY_BASE": str(RETRY_BASE), "WEBHOOK_ATTEMPTS": "8",
        "WEBHOOK_MAX_BYTES": str(MAX_BYTES), "WEBHOOK_TIMEOUT": "5", "API_WORKERS": "2",
        "WORKER_PRIVATE_KEY_B64": base64.b64encode(bytes(SERVER_KEY)).decode()})
    yield pod
    pod.stop()


def submit(pod, payload: dict) -> str:
    status, body = pod.request("POST", "/run", {**payload, "async": True})
    assert status == 202, body
    return body["job_id"]


def webhook_row(pod, job_id: str) -> dict:
    with sqlite3.connect(pod.root / "data" / "state" / "appliance.db") as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("SELECT * FROM webhooks WHERE job_id = ?", (job_id,)).fetchone())


def test_retried_with_backoff_until_delivered_and_large_results_are_referenced(pod, receiver):
    url, path = receiver.endpoint([500, 500, 200])
    job_id = submit(pod, {"workflow": workflows.image(batch=4), "webhook_url": url})
    calls = receiver.wait(path, 3)
    assert all(verified for *_, verified in calls)
    assert len({headers["webhook-id"] for _, headers, _, _ in calls}) == 1  # one message, three attempts
    assert len({body for *_, body, _ in calls}) == 1  # byte-identical retries, freshly signed
    gaps = [calls[1][0] - calls[0][0], calls[2][0] - calls[1][0]]
    # The back-off is 1 s then 2 s; the delivery loop looks for due rows every 0.5 s.
    assert RETRY_BASE <= gaps[0] < RETRY_BASE + 3 and 2 * RETRY_BASE <= gaps[1] < 2 * RETRY_BASE + 3, gaps
    sys.__stderr__.write(f"\nwebhook back-off (base {RETRY_BASE:g} s): gaps {gaps[0]:.2f} s, {gaps[1]:.2f} s\n")
    message = json.loads(calls[-1][2])
    assert message["type"] == "job.succeeded" and message["timestamp"].endswith("Z")
    data = message["data"]
    assert data["job_id"] == job_id and data["state"] == "succeeded"
    assert data["result_omitted"] is True and "result" not in data and data["href"] == f"/jobs/{job_id}"
    status, job = pod.request("GET", data["href"])
    assert status == 200 and job["result"]["outputs"]
    time.sleep(1.5)
    assert len(receiver.calls[path]) == 3  # delivered: never sent again
    row = webhook_row(pod, job_id)
    assert (row["state"], row["attempts"], row["status"]) == ("delivered", 3, 200)
    assert "webhook_retry" in pod.log() and SECRET not in pod.log()


def test_a_failed_job_and_a_cancelled_one_are_called_back(pod, receiver):
    failed_url, failed_path = receiver.endpoint()
    failed = submit(pod, {"workflow": workflows.raising("boom for the webhook"), "webhook_url": failed_url})
    cancelled_url, cancelled_path = receiver.endpoint()
    cancelled = submit(pod, {"workflow": workflows.sleep_then_save(5), "webhook_url": cancelled_url})
    deadline = time.monotonic() + 30
    while not pod.request("GET", f"/jobs/{cancelled}")[1]["prompt_id"]:  # in ComfyUI: the cancel interrupts it
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert pod.request("DELETE", f"/jobs/{cancelled}")[0] == 202
    message = json.loads(receiver.wait(failed_path, 1)[0][2])
    assert message["type"] == "job.failed"
    assert message["data"]["job_id"] == failed and message["data"]["error"].startswith("execution_error")
    assert "boom for the webhook" in message["data"]["detail"]
    message = json.loads(receiver.wait(cancelled_path, 1)[0][2])
    assert message["type"] == "job.cancelled" and message["data"]["job_id"] == cancelled


def test_forbidden_urls_are_refused_at_submission_and_nothing_is_stored(pod):
    before = pod.request("GET", "/jobs")[1]["counts"]
    cases = {
        "http://169.254.169.254/latest/meta-data": "url_forbidden:link_local",
        "http://10.1.2.3/hook": "url_forbidden:private",
        f"http://127.0.0.1:{pod.api_port}/run": "url_forbidden:own_service",
        "http://user:pw@hooks.example.com/": "url_forbidden:userinfo",
        "ftp://hooks.example.com/": "url_forbidden:scheme",
        "http://[::ffff:192.168.0.1]/": "url_forbidden:private",
        "": "url_forbidden:invalid",
    }
    for url, code in cases.items():
        status, body = pod.request("POST", "/run", {"workflow": workflows.image(), "webhook_url": url, "async": True})
        assert (status, body["error"]) == (400, code), url
    status, body = pod.request("POST", "/run", {"workflow": workflows.image(), "webhook_url": 5})
    assert (status, body["error"]) == (400, "invalid_payload:webhook_url")
    assert pod.request("GET", "/jobs")[1]["counts"] == before


def test_a_4xx_answer_is_not_retried(pod, receiver):
    url, path = receiver.endpoint([410])
    job_id = submit(pod, {"workflow": workflows.raising(), "webhook_url": url})
    receiver.wait(path, 1)
    time.sleep(RETRY_BASE + 1.5)
    assert len(receiver.calls[path]) == 1
    row = webhook_row(pod, job_id)
    assert (row["state"], row["status"], row["error"]) == ("failed", 410, "http_410")


def test_an_encrypted_jobs_webhook_stays_sealed_and_its_url_is_never_stored(pod, receiver):
    url, path = receiver.endpoint()
    envelope, box = seal_request({"workflow": workflows.raising("sealed boom"), "webhook_url": url},
                                 base64.b64encode(bytes(SERVER_KEY.public_key)).decode())
    job_id = submit(pod, envelope)
    message = json.loads(receiver.wait(path, 1)[0][2])
    data = message["data"]
    assert message["type"] == "job.failed" and data["error"] == "execution_error" and data["detail"] is None
    assert "sealed boom" in open_reply(data["result"], box)["detail"]  # as GET /jobs/{id} shows it
    assert "sealed boom" not in json.dumps(message)
    stored = b"".join(p.read_bytes() for p in (pod.root / "data" / "state").glob("appliance.db*"))
    assert path.encode() not in stored
    assert webhook_row(pod, job_id)["state"] == "delivered"


def test_a_webhook_survives_an_api_restart(pod, receiver):
    up = threading.Event()
    url, path = receiver.endpoint(answer=lambda n: 200 if up.is_set() else 503)
    job_id = submit(pod, {"workflow": workflows.image(), "webhook_url": url})
    receiver.wait(path, 1)
    old = pod.pid("api")
    restart = pod.ctl("restart", "api")
    assert restart.returncode == 0, restart.stdout + restart.stderr
    pod.wait_healthy()
    assert pod.pid("api") != old
    refused = len(receiver.calls[path])
    up.set()
    calls = receiver.wait(path, refused + 1, timeout=90)
    assert len({headers["webhook-id"] for _, headers, _, _ in calls}) == 1
    assert json.loads(calls[-1][2])["data"]["job_id"] == job_id
    deadline = time.monotonic() + 10
    while webhook_row(pod, job_id)["state"] != "delivered":
        assert time.monotonic() < deadline
        time.sleep(0.1)
