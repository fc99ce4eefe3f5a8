"""Bad job input is refused with a specific code before ComfyUI sees anything."""
import asyncio
import json
import time

import pytest

from services.config import REPO_ROOT, Settings
from services.errors import AppError
from services.jobs.runner import JobRunner
from services.jobs.workflow import isolate_outputs
from services.versions.spec import SpecStore
from tests.http_server import LocalServer, send, static

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}


class NoComfy:
    """A provider that fails the test if a bad job ever reaches ComfyUI."""

    async def client_for(self, spec, backend=None):
        raise AssertionError("bad input reached ComfyUI")

    def report_crash(self, comfy):
        pass


def make_runner(**env):
    # The web fixture listens on loopback: opt in (tests/test_ssrf_attacks.py checks refusals).
    settings = Settings.from_env({"WORKFLOW_URL_TIMEOUT": "1", "WORKFLOW_URL_MAX_BYTES": "2048",
                                  "DEFAULT_VERSION_ID": "", "FETCH_ALLOW_HOSTS": "127.0.0.1", **env})
    return JobRunner(settings, SpecStore(REPO_ROOT / "versions"), NoComfy())


def prepare(payload, **env):
    async def go():
        runner = make_runner(**env)
        try:
            return await runner.prepare(payload)
        finally:
            await runner.close()
    return asyncio.run(go())


def code_of(payload, **env) -> str:
    with pytest.raises(AppError) as err:
        prepare(payload, **env)
    return err.value.code


@pytest.mark.parametrize("payload,code", [
    ("not a dict", "invalid_payload:input"),
    ({"workflow": WORKFLOW}, "missing_version_id"),
    ({"version_id": "../../etc", "workflow": WORKFLOW}, "invalid_version_id:../../etc"),
    ({"version_id": 7, "workflow": WORKFLOW}, "invalid_payload:version_id"),
    ({"version_id": "ghost", "workflow": WORKFLOW}, "unknown_version:ghost"),
    ({"version_id": "demo", "workflow": "{not json"}, "invalid_workflow:not_json"),
    ({"version_id": "demo", "workflow": 42}, "invalid_workflow:not_object"),
    ({"version_id": "demo", "workflow": [1, 2]}, "invalid_workflow:not_object"),
    ({"version_id": "demo", "workflow": "[1, 2]"}, "invalid_workflow:not_object"),
    ({"version_id": "demo", "workflow": {}}, "invalid_workflow:empty"),
    ({"version_id": "demo", "workflow": {"1": {"inputs": {}}}}, "invalid_workflow:node_shape"),
    ({"version_id": "demo", "workflow": {"nodes": [], "links": []}}, "invalid_workflow:ui_format"),
    ({"version_id": "demo", "workflow": WORKFLOW, "workflow_url": "http://127.0.0.1:9/w"}, "workflow_conflict"),
    ({"version_id": "demo", "workflow_url": "file:///etc/passwd"}, "workflow_url_invalid"),
    ({"version_id": "demo", "workflow_url": 5}, "invalid_payload:workflow_url"),
    ({"version_id": "demo", "workflow": WORKFLOW, "output_mode": "ftp"}, "invalid_output_mode"),
    ({"version_id": "demo", "workflow": WORKFLOW, "output_mode": "gcs"}, "gcs_bucket_required"),
    ({"version_id": "demo", "workflow": WORKFLOW, "timeout": -3}, "invalid_payload:timeout"),
    ({"version_id": "demo", "workflow": WORKFLOW, "models_dir": "rel/path"}, "invalid_payload:models_dir"),
    ({"version_id": "demo", "workflow": WORKFLOW, "models_dir": "/elsewhere/models"}, "invalid_payload:models_dir"),
    ({"version_id": "demo", "workflow": WORKFLOW, "images": [{"name": "../x.png", "image": "AA=="}]}, "invalid_input_image:0"),
    ({"version_id": "demo", "workflow": WORKFLOW, "images": [{"name": "x.png"}]}, "invalid_input_image:x.png"),
])
def test_bad_payloads(payload, code):
    assert code_of(payload) == code


def test_default_version_and_workflow_are_used():
    request, spec, workflow = prepare({}, DEFAULT_VERSION_ID="demo")
    assert spec.id == "demo" and workflow == spec.workflow


def test_models_dir_may_name_the_folder_the_worker_reads():
    request, _, _ = prepare({"version_id": "demo", "workflow": WORKFLOW, "models_dir": "/vol/models/"},
                            MODELS_DIR="/vol/models")
    assert request.models_dir == "/vol/models/"


def test_workflow_as_json_string():
    _, _, workflow = prepare({"version_id": "demo", "workflow": json.dumps(WORKFLOW)})
    assert workflow == WORKFLOW


def test_job_timeout_is_capped_by_the_worker():
    request, _, _ = prepare({"version_id": "demo", "workflow": WORKFLOW, "timeout": 10**6}, JOB_TIMEOUT="60")
    assert request.timeout == 60


@pytest.fixture(scope="module")
def web():
    with LocalServer() as server:
        server.route("/ok.json", static(json.dumps(WORKFLOW).encode()))
        server.route("/missing.json", static(b"{}", status=404))
        server.route("/forbidden.json", static(b"no", status=403))
        server.route("/big.json", static(b"[" + b"1," * 5000 + b"1]"))
        server.route("/text", static(b"<html>hello</html>", content_type="text/html"))

        def slow(req):
            time.sleep(3)
            send(req, 200, b"{}")
        server.route("/slow.json", slow)

        def chunked_big(req):  # no Content-Length: the cap must hold while streaming
            req.send_response(200)
            req.send_header("Transfer-Encoding", "chunked")
            req.end_headers()
            for _ in range(10):
                chunk = b"x" * 1000
                req.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            req.wfile.write(b"0\r\n\r\n")
        server.route("/chunked.json", chunked_big)
        yield server


def test_workflow_url_is_fetched(web):
    _, _, workflow = prepare({"version_id": "demo", "workflow_url": web.url + "/ok.json"})
    assert workflow == WORKFLOW


@pytest.mark.parametrize("path,code", [
    ("/missing.json", "workflow_url_failed:404"),
    ("/forbidden.json", "workflow_url_failed:403"),
    ("/big.json", "workflow_url_failed:too_large"),
    ("/chunked.json", "workflow_url_failed:too_large"),
    ("/text", "workflow_url_failed:not_json"),
    ("/slow.json", "workflow_url_failed:timeout"),
])
def test_workflow_url_failures(web, path, code):
    assert code_of({"version_id": "demo", "workflow_url": web.url + path}) == code


def test_workflow_url_unreachable():
    assert code_of({"version_id": "demo", "workflow_url": "http://127.0.0.1:9/w.json"}) == "workflow_url_failed:unreachable"


def test_isolate_outputs_gives_each_job_its_own_subfolder_and_neutralises_traversal():
    wf = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "../../etc/evil"}},
          "2": {"class_type": "SaveVideo", "inputs": {"filename_prefix": "video/ComfyUI"}},
          "3": {"class_type": "X", "inputs": {"other": 1}}}
    out = isolate_outputs(wf, "job1")
    assert out["1"]["inputs"]["filename_prefix"] == "jobs/job1/evil"
    assert out["2"]["inputs"]["filename_prefix"] == "jobs/job1/ComfyUI"
    assert out["3"] == wf["3"] and wf["1"]["inputs"]["filename_prefix"] == "../../etc/evil"
