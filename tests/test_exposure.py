"""Closed by default, as attack tables against real Pods (supervisord, gunicorn, uvicorn):
who may start the API where, which Host headers it answers (DNS rebinding), which request
bodies it reads (CSRF), how it reads a Bearer token, and what /healthz tells a stranger.
The tables are module-level lists so their sizes can be quoted (tried / refused)."""
import os
import subprocess
import sys

import pytest

from services.api import exposure
from services.config import REPO_ROOT, Settings, SettingsError
from tests import raw_http
from tests.pod_process import start_pod

TOKEN = "s3cret-Token_42"
POD_ID = "abc123xyz"

# ---- where the API may start ------------------------------------------------------------
# Each of these binds beyond loopback without a token: `python -m services.pod` must refuse.
REFUSED_STARTS = [
    {"API_HOST": "0.0.0.0"},
    {"API_HOST": "::"},
    {"API_HOST": "192.0.2.10"},
    {"API_HOST": "my-pod.example.com"},
    {"API_HOST": ""},  # gunicorn reads an empty host as every interface
    {"APPLIANCE_PROFILE": "image"},  # the image binds 0.0.0.0 by default
    {"APPLIANCE_PROFILE": "image", "ALLOW_UNAUTHENTICATED": "0"},
    {"APPLIANCE_PROFILE": "image", "API_TOKEN": ""},
]
# And these may start (checked by the same rule the entry points run).
ALLOWED_STARTS = [
    {},
    {"API_HOST": "127.0.0.1"},
    {"API_HOST": "127.0.0.5"},
    {"API_HOST": "localhost"},
    {"API_HOST": "::1"},
    {"API_HOST": "0.0.0.0", "API_TOKEN": TOKEN},
    {"APPLIANCE_PROFILE": "image", "API_TOKEN": TOKEN},
    {"APPLIANCE_PROFILE": "image", "ALLOW_UNAUTHENTICATED": "1"},
]


@pytest.mark.parametrize("env", REFUSED_STARTS)
def test_a_public_bind_without_token_refuses_to_start(tmp_path, env):
    inherited = {k: v for k, v in os.environ.items() if k not in ("API_HOST", "API_TOKEN", "APPLIANCE_PROFILE",
                                                                   "ALLOW_UNAUTHENTICATED")}
    full = {**inherited, "DATA_ROOT": str(tmp_path / "data"), "PYTHONPATH": str(REPO_ROOT), **env}
    proc = subprocess.run([sys.executable, "-m", "services.pod", "--config", str(tmp_path / "etc" / "x.conf")],
                          cwd=REPO_ROOT, env=full, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: API_HOST=") and "ALLOW_UNAUTHENTICATED=1" in lines[0]
    assert not (tmp_path / "data").exists()  # refused before anything was installed or created


@pytest.mark.parametrize("env", ALLOWED_STARTS)
def test_loopback_a_token_or_an_explicit_opt_out_may_start(env):
    exposure.check_bind(Settings.from_env(env))


def test_gunicorn_refuses_too_when_started_without_services_pod(tmp_path):
    env = {**os.environ, "API_HOST": "0.0.0.0", "DATA_ROOT": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("API_TOKEN", None)
    proc = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(REPO_ROOT / "etc" / "gunicorn.conf.py"),
                           "services.api.app:create_app()"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "config error: API_HOST=0.0.0.0" in proc.stderr
    with pytest.raises(SettingsError):
        from services.api.app import create_app
        create_app(Settings.from_env({"API_HOST": "0.0.0.0", "DATA_ROOT": str(tmp_path)}))


# ---- the Pods the tables run against ----------------------------------------------------
@pytest.fixture(scope="module")
def local_pod(tmp_path_factory):
    """`make run`: loopback, no token. API_ALLOWED_HOSTS and RUNPOD_POD_ID add names."""
    pod = start_pod(tmp_path_factory.mktemp("local"), env={"API_ALLOWED_HOSTS": "api.example.com *.lan.example",
                                                           "RUNPOD_POD_ID": POD_ID})
    yield pod
    pod.stop()


@pytest.fixture(scope="module")
def image_pod(tmp_path_factory):
    """The image's profile on a Pod: 0.0.0.0, a token, RunPod's proxy names."""
    pod = start_pod(tmp_path_factory.mktemp("image"), env={"APPLIANCE_PROFILE": "image", "API_TOKEN": TOKEN,
                                                           "RUNPOD_POD_ID": POD_ID, "OUTPUT_MODE": "base64"})
    yield pod
    pod.stop()


# ---- Host header (DNS rebinding: a page's own host name, resolving to 127.0.0.1) ----------
# (Host header or None for none, status on the local Pod, status on the image Pod)
HOSTS = [
    ("127.0.0.1:{port}", 200, 200),
    ("127.0.0.1", 200, 200),
    ("localhost:{port}", 200, 200),
    ("LocalHost", 200, 200),
    ("localhost.", 200, 200),
    ("[::1]:{port}", 200, 200),
    ("[::1]", 200, 200),
    ("api.example.com", 200, 421),                   # API_ALLOWED_HOSTS (local Pod only)
    ("box.lan.example:8080", 200, 421),              # *.lan.example
    (f"{POD_ID}-{{port}}.proxy.runpod.net", 200, 200),  # the Pod's own proxy name
    ("other-8000.proxy.runpod.net", 421, 200),       # *.proxy.runpod.net: the image default
    ("proxy.runpod.net", 421, 421),
    ("evilproxy.runpod.net", 421, 421),
    ("x.proxy.runpod.net.evil.com", 421, 421),
    ("lan.example", 421, 421),
    ("evil.com", 421, 421),
    ("evil.com:{port}", 421, 421),
    ("127.0.0.1.evil.com", 421, 421),
    ("localhost.evil.com", 421, 421),
    ("127.0.0.1.nip.io", 421, 421),
    ("7f000001.c0a80001.rbndr.us", 421, 421),
    ("0.0.0.0", 421, 421),
    ("127.0.0.2", 421, 421),
    ("169.254.169.254", 421, 421),
    ("[::ffff:127.0.0.1]", 421, 421),
    (None, 400, 400),
    ("", 400, 400),
    ("evil.com:http", 400, 400),
    ("a b", 400, 400),
    ("127.0.0.1, evil.com", 400, 400),
    ("user@127.0.0.1", 400, 400),
    ("[::1", 400, 400),
    ("127.0.0.1:1:2", 400, 400),
]


def _host(template, pod):
    return template.format(port=pod.api_port) if template is not None else None


@pytest.mark.parametrize("template,local,image", HOSTS)
def test_host_header_table(local_pod, image_pod, template, local, image):
    for pod, expected, headers in ((local_pod, local, {}), (image_pod, image, {"Authorization": f"Bearer {TOKEN}"})):
        for path in ("/jobs", "/healthz"):
            status, body, _ = raw_http.request(pod.api_port, "GET", path, host=_host(template, pod), headers=headers)
            assert status == expected, (pod.root.name, path, template, body)
            if expected != 200:
                assert body["error"] == "host_not_allowed"


# ---- request bodies: only application/json (a page can send the others cross-origin) -----
# (Content-Type or None, accepted?)
CONTENT_TYPES = [
    ("application/json", True),
    ("application/json; charset=utf-8", True),
    ("Application/JSON; Charset=UTF-8", True),
    ('application/json;charset="utf-8"', True),
    (None, False),
    ("", False),
    ("text/plain", False),
    ("text/plain; charset=utf-8", False),
    ("application/x-www-form-urlencoded", False),
    ("multipart/form-data; boundary=xyz", False),
    ("application/json; charset=latin-1", False),
    ("application/jsonp", False),
    ("application/vnd.api+json", False),
    ("text/json", False),
    ("application/octet-stream", False),
]
BODY_ROUTES = ("/run", "/download")


@pytest.mark.parametrize("content_type,accepted", CONTENT_TYPES)
def test_content_type_table(local_pod, content_type, accepted):
    for path in BODY_ROUTES:
        headers = {} if content_type is None else {"Content-Type": content_type}
        # A JSON array: read, it is refused by the route itself (so no job or download starts).
        status, answer, _ = raw_http.request(local_pod.api_port, "POST", path, body=b"[1]", headers=headers)
        expected = (400, "invalid_payload:body") if accepted else (415, "unsupported_media_type")
        assert (status, answer["error"]) == expected, (path, content_type, answer)


def test_wrong_routes_and_methods_keep_their_own_errors(local_pod):
    # The media type is checked after routing: an unknown route stays 404, a wrong method 405.
    assert raw_http.request(local_pod.api_port, "POST", "/nope", body=b"x", headers={"Content-Type": "text/plain"})[0] == 404
    assert raw_http.request(local_pod.api_port, "POST", "/healthz", body=b"x", headers={"Content-Type": "text/plain"})[0] == 405


# ---- Bearer tokens ----------------------------------------------------------------------
# (Authorization header or None, accepted?)
BEARERS = [
    (f"Bearer {TOKEN}", True),
    (f"bearer {TOKEN}", True),
    (f"BEARER {TOKEN}", True),
    (f"bEaReR {TOKEN}", True),
    (f"Bearer  {TOKEN}", True),   # RFC 9110: 1*SP between scheme and credentials
    (f" Bearer {TOKEN} ", True),  # surrounding whitespace is not part of a field value
    (None, False),
    ("", False),
    ("Bearer", False),
    ("Bearer ", False),
    (TOKEN, False),
    (f"Basic {TOKEN}", False),
    (f"Token {TOKEN}", False),
    (f"Bearer={TOKEN}", False),
    (f"Bearer\t{TOKEN}", False),
    (f"Bearer {TOKEN.upper()}", False),  # the token itself is case-sensitive
    (f"Bearer {TOKEN[:-1]}", False),
    (f"Bearer {TOKEN}x", False),
    (f"Bearer {TOKEN} {TOKEN}", False),
    (f"Bearer {TOKEN}, Bearer {TOKEN}", False),
    ("Bearer \u00e9\u00e9\u00e9", False),  # non-ASCII must be a 401, not a 500 in compare_digest
]


@pytest.mark.parametrize("authorization,accepted", BEARERS)
def test_bearer_table(image_pod, authorization, accepted):
    headers = {} if authorization is None else {"Authorization": authorization}
    status, body, response_headers = raw_http.request(image_pod.api_port, "GET", "/jobs", headers=headers)
    if accepted:
        assert status == 200, body
    else:
        assert (status, body["error"]) == (401, "unauthorized")
        assert response_headers["WWW-Authenticate"].startswith("Bearer")


# ---- /healthz: ok and the public key for anyone, details for the token holder ------------
PUBLIC_HEALTH = {"ok", "server_public_key_b64"}
DETAILED_HEALTH = {"ok", "model_dir", "server_public_key_b64", "comfy", "gpu", "gpu_fault", "backends", "programs",
                   "version", "startup"}


def test_healthz_tells_a_stranger_only_ok_and_the_public_key(image_pod):
    status, body, _ = raw_http.request(image_pod.api_port, "GET", "/healthz")
    assert status == 200 and set(body) == PUBLIC_HEALTH and body["ok"] is True
    status, body, _ = raw_http.request(image_pod.api_port, "GET", "/healthz", headers={"Authorization": "Bearer wrong"})
    assert status == 200 and set(body) == PUBLIC_HEALTH
    status, body, _ = raw_http.request(image_pod.api_port, "GET", "/healthz",
                                       headers={"Authorization": f"bearer {TOKEN}"})
    assert status == 200 and set(body) == DETAILED_HEALTH and "api" in body["programs"]
    assert raw_http.request(image_pod.api_port, "GET", "/openapi.json")[0] == 200  # public too


def test_healthz_details_are_public_on_a_token_less_loopback_api(local_pod):
    status, body, _ = raw_http.request(local_pod.api_port, "GET", "/healthz")
    assert status == 200 and set(body) == DETAILED_HEALTH


def test_allow_unauthenticated_serves_without_token_but_hides_details(tmp_path):
    pod = start_pod(tmp_path / "pod", env={"APPLIANCE_PROFILE": "image", "ALLOW_UNAUTHENTICATED": "1",
                                           "OUTPUT_MODE": "base64"})
    try:
        assert raw_http.request(pod.api_port, "GET", "/jobs")[0] == 200
        status, body, _ = raw_http.request(pod.api_port, "GET", "/healthz")
        assert status == 200 and set(body) == PUBLIC_HEALTH
    finally:
        assert pod.stop() == 0
