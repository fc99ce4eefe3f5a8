"""The client side of encryption with the real pieces on loopback: key pairs from the command
line; the guide's smoke script (client/test_encrypted_run.py) run as a subprocess with only the
guide's environment against `python -m services.serverless --rp_serve_api` behind RunPod's
public paths (tests/runpod_api.py); a real job on the stand-in; a Pod with API_TOKEN; and
the errors a first setup meets (wrong key, wrong API key, plaintext to an encrypted worker,
RunPod's own job states)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from client import ClientError, EncryptedClient, PodEndpoint, RunPodEndpoint, send_plain
from client import keys
from services.config import REPO_ROOT
from services.security.envelope import open_payload, seal_request
from tests import workflows
from tests.http_server import LocalServer, static
from tests.pod_process import start_pod
from tests.runpod_api import RunPodApi
from tests.test_serverless import Handler

PRIVATE, PUBLIC = keys.generate()
SMOKE = REPO_ROOT / "client" / "test_encrypted_run.py"


def run_client(*args: str, env: dict, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    """A client process with only `env` (and the interpreter's own path) in its environment."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                          timeout=120)


# ---- keys ---------------------------------------------------------------------------------------
def test_keys_prints_the_guides_two_lines_and_public_key_derives_the_same(tmp_path):
    made = run_client("-m", "client", "keys", env={"PYTHONPATH": str(REPO_ROOT)}, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    lines = dict(line.split("=", 1) for line in made.stdout.splitlines())
    assert set(lines) == {"WORKER_PRIVATE_KEY_B64", "SERVER_PUBLIC_KEY_B64"}
    derived = run_client("-m", "client", "public-key", env={"PYTHONPATH": str(REPO_ROOT)}, cwd=tmp_path,
                         stdin=lines["WORKER_PRIVATE_KEY_B64"] + "\n")
    assert derived.stdout.strip() == f"SERVER_PUBLIC_KEY_B64={lines['SERVER_PUBLIC_KEY_B64']}"
    from_env = run_client("-m", "client", "public-key", cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO_ROOT), "WORKER_PRIVATE_KEY_B64": lines["WORKER_PRIVATE_KEY_B64"]})
    assert from_env.stdout == derived.stdout

    # The pair works: what a client seals for the public key, a worker with the private key opens.
    envelope, _ = seal_request({"workflow": {"1": {}}}, lines["SERVER_PUBLIC_KEY_B64"])
    worker = SimpleNamespace(worker_private_key_b64=lines["WORKER_PRIVATE_KEY_B64"], encryption_required=True)
    assert open_payload(envelope, worker).payload == {"workflow": {"1": {}}}


def test_a_broken_key_is_a_clear_error():
    with pytest.raises(ClientError) as err:
        keys.public_of("not base64!")
    assert err.value.code == "invalid_key"
    with pytest.raises(ClientError) as err:
        EncryptedClient(RunPodEndpoint("ep", "k"), "AAAA")
    assert err.value.code == "invalid_key" and "32" in err.value.detail


# ---- RunPod Serverless (the SDK's local API behind RunPod's paths) ----------------------------
def guide_env(api: RunPodApi, public: str = PUBLIC, api_key: str | None = None) -> dict:
    """The deployment guide's client environment, and RUNPOD_API_BASE pointing at loopback."""
    return {"RP_ENDPOINT_ID": api.endpoint_id, "RP_API_KEY": api_key or api.api_key, "SERVER_PUBLIC_KEY_B64": public,
            "RUNPOD_SERVERLESS": "1", "RUNPOD_API_BASE": api.base}


def behind_runpod(folder: Path, env: dict, comfy_home: bool = True):
    """A serverless worker with encryption required, and RunPod's API in front of it."""
    handler = Handler(folder, comfy_home=comfy_home,
                      env={"ENCRYPTION_REQUIRED": "1", "WORKER_PRIVATE_KEY_B64": PRIVATE, **env})
    try:
        with RunPodApi(handler.api_port) as api:
            yield handler, api
    finally:
        handler.stop()


@pytest.fixture(scope="module")
def dry_worker(tmp_path_factory):
    """The guide's "Serverless Dry-Run Encryption Smoke" worker."""
    yield from behind_runpod(tmp_path_factory.mktemp("dry"), {"DRY_RUN": "1"}, comfy_home=False)


@pytest.mark.comfy
def test_the_guides_smoke_script_passes_against_a_dry_run_worker(dry_worker, tmp_path):
    handler, api = dry_worker
    done = run_client(str(SMOKE), env=guide_env(api), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("encrypted smoke OK: ") and "dry_run" in done.stdout
    assert len(done.stdout.splitlines()) == 1
    # The API key went to RunPod's API only, as a bearer token; nothing secret or plain in the worker's log.
    assert all(headers.get("Authorization") == f"Bearer {api.api_key}" for _, _, headers in api.requests)
    log = handler.log_path.read_text()
    assert PRIVATE not in log and api.api_key not in log and "EmptyImage" not in log


@pytest.mark.comfy
@pytest.mark.parametrize("change, code", [
    ({"public": keys.generate()[1]}, "decryption_failed"),
    ({"api_key": "wrong-key"}, "unauthorized"),
])
def test_the_smoke_script_names_a_wrong_key(dry_worker, tmp_path, change, code):
    handler, api = dry_worker
    done = run_client(str(SMOKE), env=guide_env(api, **change), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.startswith(f"encrypted smoke FAILED: {code}"), done.stdout
    assert ClientError.HINTS[code] in done.stdout


@pytest.mark.comfy
def test_plaintext_to_an_encryption_required_worker_is_refused_by_code(dry_worker):
    _, api = dry_worker
    with pytest.raises(ClientError) as err:
        send_plain(RunPodEndpoint(api.endpoint_id, api.api_key, api_base=api.base), {"workflow": workflows.image()})
    assert err.value.code == "encryption_required"


@pytest.fixture(scope="module")
def real_worker(tmp_path_factory):
    yield from behind_runpod(tmp_path_factory.mktemp("real"), {})


@pytest.mark.comfy
def test_the_smoke_script_runs_a_real_job_and_writes_its_output(real_worker, tmp_path):
    _, api = real_worker
    done = run_client(str(SMOKE), env={**guide_env(api), "SMOKE_OUT": str(tmp_path / "out")}, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 output(s)" in done.stdout
    (png,) = (tmp_path / "out").iterdir()
    assert Image.open(png).size == (64, 64)


@pytest.mark.comfy
def test_the_client_command_polls_an_async_job_and_opens_a_sealed_failure(real_worker, tmp_path):
    _, api = real_worker
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"workflow": workflows.image(width=24, height=24), "output_mode": "base64"}))
    env = {**guide_env(api), "PYTHONPATH": str(REPO_ROOT)}
    done = run_client("-m", "client", "run", str(payload), "--async", "--out", str(tmp_path / "o"), env=env,
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outputs"][0]["base64"].endswith("base64 chars>")
    assert any(path.endswith("/run") for _, path, _ in api.requests)
    assert any("/status/" in path for method, path, _ in api.requests if method == "GET")
    (png,) = (tmp_path / "o").iterdir()
    assert Image.open(io.BytesIO(png.read_bytes())).size == (24, 24)

    # A failure's suffix and detail are sealed (they can name what the payload held); RunPod's
    # /runsync keeps only the `error` string, so the client learns the readable code prefix.
    client = EncryptedClient(RunPodEndpoint(api.endpoint_id, api.api_key, api_base=api.base), PUBLIC)
    with pytest.raises(ClientError) as err:
        client.run({"workflow": workflows.image(), "version_id": "ghost"})
    assert err.value.code == "unknown_version" and "sealed" in err.value.detail


# ---- RunPod's own job states, and a client-side timeout ----------------------------------------
@pytest.mark.parametrize("state, code", [("CANCELLED", "cancelled"), ("TIMED_OUT", "timed_out"),
                                         ("FAILED", "out_of_memory")])
def test_runpods_final_states_are_typed(state, code):
    with LocalServer() as server:
        server.route("/v2/ep/runsync", static(json.dumps(
            {"id": "j1", "status": state, "error": "out_of_memory: a node ran out of memory"}).encode()))
        with pytest.raises(ClientError) as err:
            send_plain(RunPodEndpoint("ep", "k", api_base=f"{server.url}/v2"), {"workflow": {}})
    assert err.value.code == code


def test_a_job_still_queued_at_the_timeout_is_cancelled():
    with LocalServer() as server:
        for path in ("/v2/ep/runsync", "/v2/ep/status/j2", "/v2/ep/cancel/j2"):
            server.route(path, static(b'{"id": "j2", "status": "IN_QUEUE"}'))
        with pytest.raises(ClientError) as err:
            send_plain(RunPodEndpoint("ep", "k", api_base=f"{server.url}/v2", timeout=0.5, poll_interval=0.1),
                       {"workflow": {}})
        assert err.value.code == "timeout"
        assert ("POST", "/v2/ep/cancel/j2") in [(m, p) for m, p, _ in server.hits]


# ---- a Pod ---------------------------------------------------------------------------------------
@pytest.mark.comfy
def test_an_encrypted_run_against_a_pod_with_a_token(tmp_path):
    pod = start_pod(tmp_path / "pod", env={"API_TOKEN": "pod-token", "WORKER_PRIVATE_KEY_B64": PRIVATE,
                                           "ENCRYPTION_REQUIRED": "1"})
    try:
        endpoint = PodEndpoint(pod.url, "pod-token")
        client = EncryptedClient(endpoint)  # the public key comes from /healthz
        assert client.public_key == PUBLIC
        result = client.run({"workflow": workflows.image(width=16, height=16), "output_mode": "base64"})
        assert result["outputs"][0]["filename"].endswith(".png")
        with pytest.raises(ClientError) as err:
            client.run({"workflow": workflows.image(), "version_id": "ghost"})
        assert err.value.code == "unknown_version:ghost"
        with pytest.raises(ClientError) as err:
            EncryptedClient(PodEndpoint(pod.url, "wrong-token"), PUBLIC).run({"workflow": workflows.image()})
        assert err.value.code == "unauthorized"
        done = run_client(str(SMOKE), cwd=tmp_path, env={"POD_URL": pod.url, "API_TOKEN": "pod-token",
                                                         "SMOKE_OUT": str(tmp_path / "out")})
        assert done.returncode == 0 and "1 output(s)" in done.stdout, done.stdout + done.stderr
    finally:
        pod.stop()


def test_rp_handler_serverless_is_the_same_worker(tmp_path):
    env = {**os.environ, "DATA_ROOT": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", "import rp_handler.serverless as a, services.serverless.__main__ as b;"
                           "print(a.main is b.main)"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "True", done.stderr
