"""Bad input never reaches a 5xx, as attack tables against a real Pod (and its raw HTTP, where a
header injection would lose the answer altogether) and the serverless handler (RunPod's local
API, where errors are `"<code>: <detail>"` strings); then a bounded schemathesis run against
the Pod's own /openapi.json. The tables are module-level lists so their sizes can be quoted."""
import base64
import json
import os
import subprocess
import sys

import pytest
from nacl.public import PrivateKey

from tests import raw_http, workflows
from tests.http_server import LocalServer, static
from tests.pod_process import start_pod
from tests.test_serverless import Handler

SERVER_KEY = PrivateKey.generate()
KEY_ENV = {"WORKER_PRIVATE_KEY_B64": base64.b64encode(bytes(SERVER_KEY)).decode(),
           "GCS_ALLOWED_BUCKETS": "allowed-bucket", "WORKFLOW_URL_TIMEOUT": "3"}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# ---- job payloads: the same table for the Pod's /run and the serverless handler ---------
# (what it is, the payload as JSON text, HTTP status, error code). JSON text, not objects:
# NaN, Infinity, 1e400 and 400-digit numbers only exist there.
WF = json.dumps(workflows.image())
PAYLOADS = [
    ("nesting 100 deep", '{"workflow": %s}' % nested(100), 400, "json_too_deep"),
    ("nesting 70 deep inside a node", '{"workflow": {"1": {"class_type": "X", "inputs": {"a": %s}}}}' % nested(66),
     400, "json_too_deep"),
    ("workflow string nesting 5000 deep", json.dumps({"workflow": nested(5000)}), 400, "json_too_deep"),
    ("timeout NaN", '{"workflow": %s, "timeout": NaN}' % WF, 400, "invalid_payload:timeout"),
    ("timeout Infinity", '{"workflow": %s, "timeout": Infinity}' % WF, 400, "invalid_payload:timeout"),
    ("timeout -Infinity", '{"workflow": %s, "timeout": -Infinity}' % WF, 400, "invalid_payload:timeout"),
    ("timeout 1e400", '{"workflow": %s, "timeout": 1e400}' % WF, 400, "invalid_payload:timeout"),
    ("timeout with 400 digits", '{"workflow": %s, "timeout": %s}' % (WF, "9" * 400), 400, "invalid_payload:timeout"),
    ("timeout with -400 digits", '{"workflow": %s, "timeout": -%s}' % (WF, "9" * 400), 400, "invalid_payload:timeout"),
    ("timeout true", '{"workflow": %s, "timeout": true}' % WF, 400, "invalid_payload:timeout"),
    ("timeout as a string", '{"workflow": %s, "timeout": "10"}' % WF, 400, "invalid_payload:timeout"),
    ("NaN inside a node", '{"workflow": {"1": {"class_type": "X", "inputs": {"v": NaN}}}}', 400,
     "invalid_payload:workflow"),
    ("NaN inside a workflow string", json.dumps({"workflow": '{"1": {"class_type": "X", "inputs": {"v": NaN}}}'}),
     400, "invalid_payload:workflow"),
    ("version_id with a newline", json.dumps({"version_id": "demo\n"}), 400, "invalid_version_id:demo"),
    ("version_id with CR LF", json.dumps({"version_id": "demo\r\n"}), 400, "invalid_version_id:demo"),
    ("version_id with NUL", json.dumps({"version_id": "de\x00mo"}), 400, "invalid_version_id:demo"),
    ("version_id schema", json.dumps({"version_id": "schema"}), 404, "unknown_version:schema"),
    ("version_id SCHEMA", json.dumps({"version_id": "SCHEMA"}), 404, "unknown_version:SCHEMA"),
    ("version_id 1000 characters", json.dumps({"version_id": "v" * 1000}), 400, "invalid_version_id:" + "v" * 64),
    ("image name with a newline", json.dumps({"images": [{"name": "x.png\n", "image": "AA=="}]}), 400,
     "invalid_input_image:0"),
    ("image name with CR LF", json.dumps({"images": [{"name": "x.png\r\nX: 1", "image": "AA=="}]}), 400,
     "invalid_input_image:0"),
    ("image url unclosed IPv6", json.dumps({"images": [{"name": "x.png", "url": "http://[::1"}]}), 400,
     "invalid_input_image:x.png"),
    ("image url bad port", json.dumps({"images": [{"name": "x.png", "url": "http://host:port/x"}]}), 400,
     "invalid_input_image:x.png"),
    ("image url a number", json.dumps({"images": [{"name": "x.png", "url": 5}]}), 400, "invalid_input_image:x.png"),
    ("images not a list", json.dumps({"images": "x.png"}), 400, "invalid_payload:images"),
    ("workflow_url unclosed IPv6", json.dumps({"workflow_url": "http://[::1"}), 400, "workflow_url_invalid"),
    ("workflow_url with a newline", json.dumps({"workflow_url": "http://host/w.json\n"}), 400, "workflow_url_invalid"),
    ("workflow_url with a space", json.dumps({"workflow_url": "http://ho st/w.json"}), 400, "workflow_url_invalid"),
    ("gcs_bucket upper case", json.dumps({"output_mode": "gcs", "gcs_bucket": "Bad_Bucket"}), 400,
     "invalid_payload:gcs_bucket"),
    ("gcs_bucket ends with -", json.dumps({"output_mode": "gcs", "gcs_bucket": "bucket-"}), 400,
     "invalid_payload:gcs_bucket"),
    ("gcs_bucket 2 characters", json.dumps({"output_mode": "gcs", "gcs_bucket": "ab"}), 400,
     "invalid_payload:gcs_bucket"),
    ("gcs_bucket 64 characters", json.dumps({"output_mode": "gcs", "gcs_bucket": "a" * 64}), 400,
     "invalid_payload:gcs_bucket"),
    ("gcs_bucket an IP address", json.dumps({"output_mode": "gcs", "gcs_bucket": "192.168.1.1"}), 400,
     "invalid_payload:gcs_bucket"),
    ("gcs_bucket goog prefix", json.dumps({"output_mode": "gcs", "gcs_bucket": "goog-outputs"}), 400,
     "invalid_payload:gcs_bucket"),
    ("gcs_bucket with g00gle", json.dumps({"output_mode": "gcs", "gcs_bucket": "my-g00gle-bucket"}), 400,
     "invalid_payload:gcs_bucket"),
    ("gcs_bucket with a newline", json.dumps({"output_mode": "gcs", "gcs_bucket": "allowed-bucket\n"}), 400,
     "invalid_payload:gcs_bucket"),
    ("gcs_bucket with a slash", json.dumps({"output_mode": "gcs", "gcs_bucket": "a/b"}), 400,
     "invalid_payload:gcs_bucket"),
    ("gcs_bucket not in GCS_ALLOWED_BUCKETS", json.dumps({"output_mode": "gcs", "gcs_bucket": "other-bucket"}), 403,
     "gcs_bucket_not_allowed:other-bucket"),
    ("gcs_prefix with ..", json.dumps({"gcs_prefix": "a/../b"}), 400, "invalid_payload:gcs_prefix"),
    ("gcs_prefix with a newline", json.dumps({"gcs_prefix": "a\nb"}), 400, "invalid_payload:gcs_prefix"),
    ("gcs_prefix with a wildcard", json.dumps({"gcs_prefix": "out/*"}), 400, "invalid_payload:gcs_prefix"),
    ("gcs_prefix a lone surrogate", '{"gcs_prefix": "a\\ud800b"}', 400, "invalid_payload:gcs_prefix"),
    ("gcs_prefix 600 bytes", json.dumps({"gcs_prefix": "p" * 600}), 400, "invalid_payload:gcs_prefix"),
    ("output_mode a list", json.dumps({"output_mode": ["gcs"]}), 400, "invalid_output_mode"),
    ("verbose an object", json.dumps({"verbose": {"a": 1}}), 400, "invalid_payload:verbose"),
]

# ---- raw HTTP against the Pod: headers, paths, query strings, bodies --------------------
# (what it is, method, path, body bytes or None, extra headers, HTTP status, error code; None:
# uvicorn's HTTP parser answers a plain-text 400 before the app sees the request)
JSON = {"Content-Type": "application/json"}
REQUESTS = [
    ("job_id with a newline (a Location header)", "POST", "/run",
     json.dumps({"job_id": "abc\n", "async": True}).encode(), JSON, 400, "invalid_payload:job_id"),
    ("job_id with CR LF and a header", "POST", "/run",
     json.dumps({"job_id": "a\r\nSet-Cookie: x=1", "async": True}).encode(), JSON, 400, "invalid_payload:job_id"),
    ("job_id with a newline, synchronous", "POST", "/run", json.dumps({"job_id": "abc\n"}).encode(), JSON, 400,
     "invalid_payload:job_id"),
    ("job_id 65 characters", "POST", "/run", json.dumps({"job_id": "j" * 65}).encode(), JSON, 400,
     "invalid_payload:job_id"),
    ("job_id a number", "POST", "/run", json.dumps({"job_id": 7}).encode(), JSON, 400, "invalid_payload:job_id"),
    ("nesting 100000 deep (RecursionError in json)", "POST", "/run", nested(100_000).encode(), JSON, 400,
     "json_too_deep"),
    ("nesting 100 deep on /download", "POST", "/download", ('{"url": %s}' % nested(100)).encode(), JSON, 400,
     "json_too_deep"),
    ("NaN on /download", "POST", "/download", b'{"url": "http://h/x", "type": "vae", "size": NaN}', JSON, 400,
     "invalid_payload:size"),
    ("body not UTF-8", "POST", "/run", b'{"version_id": "\xff\xfe"}', JSON, 400, "invalid_json"),
    ("Content-Length of 100 GB", "POST", "/run", b'{"a": 1}', {**JSON, "Content-Length": str(10**11)}, 413,
     "payload_too_large"),
    ("Content-Length not a number", "POST", "/run", b"{}", {**JSON, "Content-Length": "abc"}, 400, None),
    ("Content-Length negative", "POST", "/run", b"{}", {**JSON, "Content-Length": "-1"}, 400, None),
    ("job path with a newline", "GET", "/jobs/abc%0A", None, {}, 404, "not_found"),
    ("job path with CR LF", "DELETE", "/jobs/abc%0D%0ASet-Cookie:%20x", None, {}, 404, "not_found"),
    ("download path with NUL", "GET", "/downloads/%00", None, {}, 404, "not_found"),
    ("limit 1e400", "GET", "/jobs?limit=1e400", None, {}, 400, "invalid_payload"),
    ("limit with 30 digits", "GET", "/jobs?limit=" + "9" * 30, None, {}, 400, "invalid_payload"),
    ("limit NaN", "GET", "/downloads?limit=NaN", None, {}, 400, "invalid_payload"),
    ("state with a newline", "GET", "/jobs?state=running%0A", None, {}, 400, "invalid_payload:state"),
]


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    pod = start_pod(tmp_path_factory.mktemp("bad-input"), env=KEY_ENV)
    yield pod
    pod.stop()


@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    # DRY_RUN: every row fails validation, which runs first whatever DRY_RUN says.
    h = Handler(tmp_path_factory.mktemp("serverless-bad-input"), env={**KEY_ENV, "DRY_RUN": "1"}, comfy_home=False)
    yield h
    h.stop()


@pytest.mark.parametrize("what,text,status,code", PAYLOADS, ids=[row[0] for row in PAYLOADS])
def test_pod_refuses_bad_payloads(pod, what, text, status, code):
    got, body, _ = raw_http.post_json(pod.api_port, "/run", text.encode())
    assert (got, body["error"]) == (status, code), body


@pytest.mark.parametrize("what,text,status,code", PAYLOADS, ids=[row[0] for row in PAYLOADS])
def test_serverless_refuses_bad_payloads(handler, what, text, status, code):
    answer = handler.post("/runsync", json.loads('{"input": %s}' % text))
    assert answer["status"] == "FAILED", answer
    assert answer["error"].split(": ", 1)[0] == code, answer["error"]


@pytest.mark.parametrize("what,method,path,body,headers,status,code", REQUESTS, ids=[row[0] for row in REQUESTS])
def test_pod_answers_bad_requests_with_a_4xx(pod, what, method, path, body, headers, status, code):
    got, answer, _ = raw_http.request(pod.api_port, method, path, body=body, headers=headers)
    assert got == status, answer
    if code is not None:
        assert answer["error"] == code and isinstance(answer["detail"], str), answer


def test_a_refused_job_id_left_no_job_behind(pod):
    status, listing = pod.request("GET", "/jobs?limit=1000")
    assert status == 200 and not [j for j in listing["jobs"] if not j["job_id"].isprintable()]


# Deep JSON inside an envelope or behind workflow_url (json.loads there raised RecursionError).
def _envelope_with(plaintext: bytes) -> bytes:
    from nacl.public import Box
    from nacl.utils import random

    client = PrivateKey.generate()
    nonce = random(Box.NONCE_SIZE)
    sealed = Box(client, SERVER_KEY.public_key).encrypt(plaintext, nonce)
    return json.dumps({"encrypted": True, "epk": base64.b64encode(bytes(client.public_key)).decode(),
                       "nonce": base64.b64encode(nonce).decode(),
                       "ciphertext": base64.b64encode(sealed.ciphertext).decode()}).encode()


def test_envelope_with_deep_plaintext(pod):
    got, answer, _ = raw_http.post_json(pod.api_port, "/run", _envelope_with(nested(100_000).encode()))
    assert got < 500, answer


def test_workflow_url_with_deep_json(pod):
    with LocalServer() as server:
        server.route("/deep.json", static(nested(100_000).encode()))
        got, answer, _ = raw_http.post_json(pod.api_port, "/run", {"workflow_url": server.url + "/deep.json"})
    assert got < 500, answer


def test_download_sha256_with_a_trailing_newline(pod):
    body = {"url": "https://huggingface.co/x/y.safetensors", "type": "vae", "sha256": "a" * 64 + "\n"}
    got, answer, _ = raw_http.post_json(pod.api_port, "/download", body)
    assert (got, answer["error"]) == (400, "invalid_payload:sha256"), answer


def test_download_url_that_urlsplit_refuses(pod):
    # Found by the schemathesis run below (a 500 until services/models/sources.py caught it).
    got, answer, _ = raw_http.post_json(pod.api_port, "/download", {"url": "https://[::1", "type": "vae"})
    assert (got, answer["error"]) == (400, "invalid_payload:url"), answer


def test_download_filename_with_a_trailing_newline(pod):
    body = {"url": "https://huggingface.co/x/y.safetensors", "type": "vae", "filename": "x.bin\n"}
    got, answer, _ = raw_http.post_json(pod.api_port, "/download", body)
    assert (got, answer["error"]) == (400, "invalid_filename"), answer


# ---- schemathesis: generated requests from the Pod's own OpenAPI document ----------------
SCHEMATHESIS_MAX_SECONDS = 30


@pytest.mark.timeout(240)
def test_schemathesis_finds_no_5xx(tmp_path):
    # DRY_RUN: generated valid jobs are validated in full but never queue in ComfyUI, where a
    # legitimately slow job could end as 504 job_timeout (an outcome, not a bad-input failure).
    pod = start_pod(tmp_path / "pod", env={**KEY_ENV, "DRY_RUN": "1"})
    report = tmp_path / "schemathesis.json"
    try:
        proc = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "schemathesis"), "run", pod.url + "/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", "40", "--max-time", str(SCHEMATHESIS_MAX_SECONDS),
             "--seed", "20260", "--workers", "2", "--request-timeout", "30", "--phases", "examples,coverage,fuzzing",
             "--suppress-health-check", "all", "--report", "json", "--report-json-path", str(report)],
            cwd=tmp_path, capture_output=True, text=True, timeout=200)
    finally:
        assert pod.stop() == 0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    run = json.loads(report.read_text())
    cases = run["test_cases"]
    assert run["operations"]["tested"] == run["operations"]["total"] > 0, run["operations"]
    assert cases["generated"] > 0 and cases["with_failures"] == 0 and not run["failures"] and not run["errors"], run
    sys.__stderr__.write(f"\nschemathesis: {cases['generated']} generated requests on "
                         f"{run['operations']['tested']} operations in {run['running_time']:.0f} s, 0 with a 5xx\n")


def test_an_internal_error_fails_an_async_job_once(tmp_path):
    import asyncio

    from services.api.executor import JobExecutor
    from services.config import Settings
    from services.store.db import Database
    from services.store.jobs import JobStore

    class BuggyRunner:
        runs = 0

        async def run(self, payload, **kwargs):
            BuggyRunner.runs += 1
            raise RuntimeError("a bug, not a dead worker")

    store = JobStore(Database(tmp_path / "state.db"))
    executor = JobExecutor(store, BuggyRunner(), Settings.from_env({"DATA_ROOT": str(tmp_path)}), "owner-1")
    job, _ = store.create(json.dumps({"workflow": workflows.image()}), owner="owner-1")
    try:
        asyncio.run(executor._execute(job))
    except RuntimeError:
        pass
    row = store.get(job.id)
    assert (row.state, row.error, row.attempts, BuggyRunner.runs) == ("failed", "internal_error", 1, 1)
