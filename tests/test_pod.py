"""Pod mode for real: supervisord, gunicorn + uvicorn workers, the stand-in as `comfyui`,
SQLite on disk. Faults kill real processes."""
import base64
import concurrent.futures
import io
import os
import signal
import stat
import subprocess
import sys
import time

import psutil
import pytest
from nacl.public import PrivateKey
from PIL import Image

from services.config import REPO_ROOT
from services.pod import start_failure
from services.security.envelope import open_reply, seal_request
from tests import workflows
from tests.pod_process import start_pod
from tests.standin_process import write_fake_comfy_home

SERVER_KEY = PrivateKey.generate()
SERVER_KEY_B64 = base64.b64encode(bytes(SERVER_KEY)).decode()


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    # Two API workers: jobs must survive one of them dying while the other carries on.
    pod = start_pod(tmp_path_factory.mktemp("pod"), env={"WORKER_PRIVATE_KEY_B64": SERVER_KEY_B64, "API_WORKERS": "2"})
    yield pod
    pod.stop()


@pytest.fixture(scope="module")
def model_server():
    from tests.http_server import LocalServer, static
    with LocalServer() as server:
        server.route("/lora.safetensors", static(b"L" * 300_000, content_type="application/octet-stream"))
        server.route("/vae.safetensors", static(b"V" * 1000, content_type="application/octet-stream"))
        server.route("/doc.safetensors", static(b"D" * 10, content_type="application/octet-stream"))
        yield server


def wait_job(pod, job_id, states=("succeeded", "failed", "cancelled"), timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = pod.request("GET", f"/jobs/{job_id}")
        assert status == 200, job
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} still {job['state']}")


def png_size(b64: str):
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def test_all_programs_running_behind_a_private_socket(pod):
    status = pod.ctl("status")
    assert status.returncode == 0, status.stdout
    for program in ("comfyui", "api", "modelsync", "gpuwatch", "logforward"):
        assert f"{program} " in status.stdout
    sock = pod.root / ".run" / "supervisor.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o700
    assert "inet_http_server" not in pod.conf.read_text()


def test_healthz_reports_every_part(pod):
    deadline = time.monotonic() + 10  # the snapshot is refreshed every second
    while True:
        status, health = pod.request("GET", "/healthz")
        if all(p["state"] == "RUNNING" for p in health["programs"].values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200 and health["ok"] is True
    assert health["comfy"]["state"] == "ready" and health["comfy"]["comfyui_version"]
    assert health["server_public_key_b64"] == base64.b64encode(bytes(SERVER_KEY.public_key)).decode()
    assert health["gpu"]["state"] == "ok" and health["gpu"]["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert {name: p["state"] for name, p in health["programs"].items()} == {
        "comfyui": "RUNNING", "api": "RUNNING", "modelsync": "RUNNING", "gpuwatch": "RUNNING", "logforward": "RUNNING"}
    assert health["model_dir"].endswith("data/models")


def test_run_returns_a_png_through_supervisord(pod):
    status, result = pod.request("POST", "/run", {"workflow": workflows.image(width=320, height=200)})
    assert status == 200, result
    assert png_size(result["base64"]) == (320, 200)
    status, job = pod.request("GET", f"/jobs/{result['job_id']}")
    assert job["state"] == "succeeded" and job["result"]["outputs"][0]["sha256"] == result["outputs"][0]["sha256"]


@pytest.mark.parametrize("method,path,body,status,code", [
    ("POST", "/run", b"{nope", 400, "invalid_json"),
    ("POST", "/run", b"", 400, "invalid_json"),
    ("POST", "/run", b"[1, 2]", 400, "invalid_payload:body"),
    ("POST", "/run", {"version_id": "ghost", "workflow": workflows.image()}, 404, "unknown_version:ghost"),
    ("POST", "/run", {"version_id": "../x", "workflow": workflows.image()}, 400, "invalid_version_id:../x"),
    ("POST", "/run", {"workflow": workflows.image(), "workflow_url": "http://127.0.0.1:9/x"}, 400, "workflow_conflict"),
    ("POST", "/run", {"workflow": "{broken"}, 400, "invalid_workflow:not_json"),
    ("POST", "/run", {"workflow": workflows.image(), "async": "yes"}, 400, "invalid_payload:async"),
    ("POST", "/run", {"workflow": workflows.image(), "job_id": "../../etc"}, 400, "invalid_payload:job_id"),
    ("POST", "/run", {"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}, 400, "workflow_rejected:missing_nodes"),
    ("POST", "/run", {"encrypted": True, "epk": "AAAA"}, 400, "missing encrypted fields"),
    ("GET", "/jobs/does-not-exist", None, 404, "not_found"),
    ("DELETE", "/jobs/does-not-exist", None, 404, "not_found"),
    ("GET", "/no/such/route", None, 404, "not_found"),
    ("PUT", "/healthz", None, 405, "method_not_allowed"),
    ("GET", "/jobs?state=bogus", None, 400, "invalid_payload:state"),
])
def test_bad_requests_get_a_json_4xx(pod, method, path, body, status, code):
    got_status, got = pod.request(method, path, body)
    assert (got_status, got["error"]) == (status, code), got
    assert isinstance(got.get("detail", ""), str)


def test_async_job_is_queued_then_runs(pod):
    status, accepted = pod.request("POST", "/run", {"workflow": workflows.image(color=11), "async": True})
    assert status == 202 and set(accepted) == {"job_id", "state"}
    job = wait_job(pod, accepted["job_id"])
    assert job["state"] == "succeeded" and png_size(job["result"]["base64"]) == (64, 64)
    assert job["progress"] == 100.0 and job["prompt_id"]


def test_a_client_job_id_makes_retries_idempotent(pod):
    body = {"workflow": workflows.image(color=12), "job_id": "client-chosen-1"}
    first = pod.request("POST", "/run", body)
    second = pod.request("POST", "/run", body)
    assert first[0] == 200 and second[0] == 200
    assert second[1]["job_id"] == "client-chosen-1" and second[1]["state"] == "succeeded"
    assert second[1]["result"]["prompt_id"] == first[1]["prompt_id"]  # ran once


def test_delete_cancels_a_running_job_and_frees_comfy(pod):
    status, accepted = pod.request("POST", "/run", {"workflow": workflows.sleep_then_save(30, steps=300), "async": True})
    wait_job(pod, accepted["job_id"], states=("running",))
    time.sleep(0.5)
    status, job = pod.request("DELETE", f"/jobs/{accepted['job_id']}")
    assert status == 202
    job = wait_job(pod, accepted["job_id"], timeout=10)
    assert job["state"] == "cancelled"
    started = time.monotonic()
    assert pod.request("POST", "/run", {"workflow": workflows.image(color=13)})[0] == 200
    assert time.monotonic() - started < 10


def test_encrypted_run_gets_a_sealed_reply(pod):
    envelope, box = seal_request({"workflow": workflows.image(width=40, height=30)},
                                 pod.request("GET", "/healthz")[1]["server_public_key_b64"])
    status, reply = pod.request("POST", "/run", envelope)
    assert status == 200 and set(reply) == {"encrypted", "nonce", "ciphertext"}
    assert png_size(open_reply(reply, box)["base64"]) == (40, 30)
    tampered = dict(envelope, ciphertext=base64.b64encode(b"x" * 64).decode())
    status, error = pod.request("POST", "/run", tampered)
    assert (status, error["error"]) == (400, "decryption_failed")


def test_hundred_async_jobs_all_finish_once(pod):
    def submit(i):
        return pod.request("POST", "/run", {"workflow": workflows.image(color=1000 + i, width=16, height=16),
                                            "async": True})
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(submit, range(100)))
    assert all(status == 202 for status, _ in answers)
    job_ids = [body["job_id"] for _, body in answers]
    assert len(set(job_ids)) == 100
    jobs = [wait_job(pod, job_id, timeout=120) for job_id in job_ids]
    assert [j["state"] for j in jobs] == ["succeeded"] * 100
    assert len({j["result"]["outputs"][0]["sha256"] for j in jobs}) == 100
    assert len({j["prompt_id"] for j in jobs}) == 100
    assert all(j["attempts"] == 1 for j in jobs)  # none ran twice


def test_killed_gunicorn_worker_is_replaced_and_loses_no_job(pod):
    master = psutil.Process(pod.pid("api"))
    workers = master.children()
    assert len(workers) == 2
    job_ids = []
    for i in range(12):
        status, body = pod.request("POST", "/run", {"workflow": workflows.sleep_then_save(0.3, steps=3), "async": True})
        job_ids.append(body["job_id"])
    time.sleep(0.8)
    victim = workers[0]
    victim.send_signal(signal.SIGKILL)
    jobs = [wait_job(pod, job_id, timeout=90) for job_id in job_ids]
    assert [j["state"] for j in jobs] == ["succeeded"] * 12
    deadline = time.monotonic() + 20
    while len([w for w in master.children() if w.pid != victim.pid]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_api_restart_keeps_every_accepted_job(pod):
    done = pod.request("POST", "/run", {"workflow": workflows.image(color=15), "async": True})[1]["job_id"]
    wait_job(pod, done)
    queued = [pod.request("POST", "/run", {"workflow": workflows.sleep_then_save(0.2, steps=2), "async": True})[1]["job_id"]
              for _ in range(6)]
    assert pod.ctl("restart", "api").returncode == 0
    pod.wait_healthy(30)
    assert pod.request("GET", f"/jobs/{done}")[1]["state"] == "succeeded"
    assert [wait_job(pod, job_id, timeout=90)["state"] for job_id in queued] == ["succeeded"] * 6


def test_no_comfy_home_is_fatal_and_healthz_says_why(tmp_path):
    slow_gpu = tmp_path / "hang-smi"
    slow_gpu.write_text("#!/bin/sh\nsleep 30\n")
    slow_gpu.chmod(0o755)
    pod = start_pod(tmp_path / "pod", comfy_home="missing", wait=False,
                    env={"NVIDIA_SMI": str(slow_gpu), "GPU_PROBE_TIMEOUT": "0.5"})
    home = tmp_path / "pod" / "ComfyUI"
    try:
        deadline = time.monotonic() + 40
        while "FATAL" not in pod.ctl("status", "comfyui").stdout:
            assert time.monotonic() < deadline, pod.ctl("status").stdout
            time.sleep(0.3)
        assert "comfy_init_failed:no_comfy_home" in pod.ctl("tail", "comfyui").stdout
        deadline = time.monotonic() + 20
        while True:
            try:
                status, health = pod.request("GET", "/healthz", timeout=2)
                if (health.get("gpu", {}).get("state") == "unknown"
                        and health.get("programs", {}).get("comfyui", {}).get("state") == "FATAL"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert status == 503 and health["ok"] is False
        # The program's own reason, not supervisord's "Exited too quickly".
        assert health["comfy"]["reason"] == f"comfy_init_failed:no_comfy_home: COMFY_HOME {home} does not exist"
        assert "nvidia-smi did not answer" in health["gpu"]["reason"]
        status, error = pod.request("POST", "/run", {"workflow": workflows.image()})
        # A job waits for ComfyUI only while it can come back: here it fails at once, with the reason.
        assert (status, error["error"]) == (503, "comfy_init_failed:no_comfy_home"), error
        assert error["detail"] == f"COMFY_HOME {home} does not exist"

        # Once there is a ComfyUI and the program starts, the reason is gone.
        write_fake_comfy_home(home)
        assert pod.ctl("start", "comfyui").returncode == 0
        health = pod.wait_healthy(30)
        assert health["ok"] is True and "reason" not in health["comfy"]
    finally:
        pod.stop()


def test_sigterm_stops_everything_and_leaves_no_orphans(tmp_path):
    pod = start_pod(tmp_path / "pod")
    supervisor = psutil.Process(pod.proc.pid)
    family = supervisor.children(recursive=True)
    assert len(family) >= 6  # five programs, gunicorn's workers, ComfyUI
    started = time.monotonic()
    assert pod.stop() == 0
    assert time.monotonic() - started < 45
    alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_shutdown_timeouts_nest():
    import configparser
    import re

    conf = configparser.RawConfigParser()
    conf.read(REPO_ROOT / "etc" / "supervisord.conf")
    conf.read_string((REPO_ROOT / "etc" / "comfyui-program.conf").read_text().format(program="comfyui", index=0))
    graceful = int(re.search(r"^graceful_timeout = (\d+)", (REPO_ROOT / "etc" / "gunicorn.conf.py").read_text(), re.M)[1])
    assert graceful < conf.getint("program:api", "stopwaitsecs")
    for section in conf.sections():
        if section.startswith("program:"):
            assert conf.getboolean(section, "stopasgroup") and conf.getboolean(section, "killasgroup"), section


def _documented_responses(doc, path, method, status):
    operation = doc["paths"][path][method]
    return operation["responses"][str(status)]["content"]["application/json"]["schema"]


def test_openapi_documents_every_route_and_real_answers_fit_it(pod, model_server):
    import jsonschema

    from services.api.app import create_app
    from services.config import Settings

    status, doc = pod.request("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    app = create_app(Settings.from_env({"DATA_ROOT": str(pod.root / "introspect")}))

    def routes(nodes):
        for node in nodes:
            if node.resource is not None:
                methods = {m.lower() for m, f in node.method_map.items()
                           if getattr(f, "__qualname__", "").startswith(type(node.resource).__name__)}
                yield node.uri_template, methods
            yield from routes(node.children)
    served = dict(routes(app._router._roots))
    documented = {path: {m for m in ops if m != "parameters"} for path, ops in doc["paths"].items()}
    assert served == documented

    def check(path, method, status, body):
        schema = {**_documented_responses(doc, path, method, status), "components": doc["components"]}
        jsonschema.validate(body, schema)

    status, health = pod.request("GET", "/healthz")
    check("/healthz", "get", status, health)
    status, result = pod.request("POST", "/run", {"workflow": workflows.image(color=16)})
    check("/run", "post", status, result)
    status, error = pod.request("POST", "/run", {"version_id": "../x"})
    check("/run", "post", status, error)
    status, job = pod.request("GET", f"/jobs/{result['job_id']}")
    check("/jobs/{job_id}", "get", status, job)
    status, listing = pod.request("GET", "/jobs?limit=5")
    check("/jobs", "get", status, listing)
    status, accepted = pod.request("POST", "/run", {"workflow": workflows.image(color=17), "async": True})
    check("/run", "post", status, accepted)
    status, listing = pod.request("GET", "/models/ls")
    check("/models/ls", "get", status, listing)
    status, downloads = pod.request("GET", "/downloads")
    check("/downloads", "get", status, downloads)
    status, queued = pod.request("POST", "/download", {"url": model_server.url + "/doc.safetensors", "type": "vae"})
    check("/download", "post", status, queued)
    status, download = pod.request("GET", f"/downloads/{queued['download_id']}")
    check("/downloads/{download_id}", "get", status, download)


def wait_download(pod, download_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, download = pod.request("GET", f"/downloads/{download_id}")
        assert status == 200, download
        if download["state"] in ("done", "failed"):
            return download
        time.sleep(0.1)
    raise TimeoutError(download)


def test_download_queues_modelsync_and_models_ls_lists_it(pod, model_server):
    import hashlib
    sha = hashlib.sha256(b"L" * 300_000).hexdigest()
    status, queued = pod.request("POST", "/download", {"url": model_server.url + "/lora.safetensors",
                                                       "type": "loras", "sha256": sha})
    assert status == 202
    download = wait_download(pod, queued["download_id"])
    assert download["state"] == "done" and download["bytes_done"] == download["bytes_total"] == 300_000
    status, listing = pod.request("GET", "/models/ls?type=loras")
    assert status == 200
    assert {"name": "lora.safetensors", "size": 300_000, "sha256": sha} == {
        k: v for k, v in listing["models"]["loras"][0].items() if k != "path"}


@pytest.mark.parametrize("body,code", [
    ({"url": "http://127.0.0.1:9/x.safetensors", "type": "nonsense"}, "invalid_model_type:nonsense"),
    ({"url": "ftp://127.0.0.1/x.safetensors", "type": "loras"}, "unsupported_scheme:ftp"),
    ({"url": "http://127.0.0.1:9/x", "type": "loras", "filename": "../../evil.safetensors"}, "invalid_filename"),
    ({"url": "http://127.0.0.1:9/x", "type": "loras", "filename": "a\x00b"}, "invalid_filename"),
    ({"url": "http://127.0.0.1:9/x.safetensors", "type": "loras", "sha256": "abc"}, "invalid_payload:sha256"),
])
def test_bad_downloads_are_refused(pod, body, code):
    status, error = pod.request("POST", "/download", body)
    assert (status, error["error"]) == (400, code)


def test_a_queued_download_survives_a_modelsync_restart(pod, model_server):
    assert pod.ctl("stop", "modelsync").returncode == 0
    status, queued = pod.request("POST", "/download", {"url": model_server.url + "/vae.safetensors", "type": "vae"})
    time.sleep(0.5)
    assert pod.request("GET", f"/downloads/{queued['download_id']}")[1]["state"] == "queued"
    assert pod.ctl("start", "modelsync").returncode == 0
    assert wait_download(pod, queued["download_id"])["state"] == "done"


def test_comfyui_program_names_a_missing_version_and_records_it(tmp_path):
    # No COMFY_HOME: the default version is what runs, and it is not installed.
    env = {**os.environ, "DATA_ROOT": str(tmp_path), "DEFAULT_VERSION_ID": "demo", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("COMFY_HOME", None)
    proc = subprocess.run([sys.executable, "-m", "services.comfyexec"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("version_not_installed:demo: version demo is not installed under ")
    assert start_failure.read(tmp_path / "run") == line
