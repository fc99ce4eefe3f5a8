"""The audit's attacks, as tables: every forbidden address spelling (tests/ssrf_tables.py) against
every fetcher a caller can aim (workflow_url and images[].url through the job runner, model
downloads in process and /download through a real Pod), directly, by name and via redirects;
token confusion; and the non-loopback probes again inside an empty network namespace.

No probe of a non-loopback address can leave the machine: the refusals are proven to happen
before any socket connects (tests/net_spy.py sees every connect of this process), the Pod's
/download table runs while its downloader is stopped, and the namespace test has no route out.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time

import pytest

import services.net.policy
from services.comfy.client import ComfyClient
from services.config import REPO_ROOT, Settings
from services.errors import AppError
from services.comfy.provider import FixedComfy
from services.jobs.runner import JobRunner
from services.net.policy import FetchPolicy
from services.versions.spec import SpecStore
from tests import workflows
from tests.http_server import LocalServer, send, static
from tests.model_fixtures import fetch, make_settings, payload
from tests.model_server import Blob
from tests.net_spy import spy
from tests.pod_process import start_pod
from tests.ssrf_tables import ALL, LOOPBACK, NAMES, NON_LOOPBACK, address_of, url
from tests.tls_server import TlsServer, make_certs, trusting_source

# What the tables hold, so a shrinking table fails here (and the counts can be quoted).
TABLE_SIZES = {"loopback spellings": 22, "non-loopback spellings": 31, "names": 2}


def test_table_sizes():
    assert {"loopback spellings": len(LOOPBACK), "non-loopback spellings": len(NON_LOOPBACK),
            "names": len(NAMES)} == TABLE_SIZES
    assert len({host for host, _ in ALL}) == len(ALL)


@pytest.fixture(scope="module")
def bait():
    """A server that must never be reached through a forbidden spelling: /leak.safetensors is
    what a refused URL points at, /to/<i> redirects to ALL[i], /to-probe/<i> to a name that the
    fake_dns fixture resolves to ALL[i]'s address."""
    with LocalServer() as server:
        port = server.httpd.server_address[1]
        server.route("/leak.safetensors", static(b"leaked"))
        for i, (host, _) in enumerate(ALL):
            server.route(f"/to/{i}", lambda req, h=host: send(req, 302, b"", headers={"Location": url(h, port)}))
            server.route(f"/to-probe/{i}", lambda req, i=i: send(req, 302, b"", headers={
                "Location": url(f"probe{i}.example", port)}))
        server.port = port
        yield server


def leaks(server) -> list:
    return [hit for hit in server.hits if hit[1].startswith("/leak")]


class NoComfy:
    async def client_for(self, spec, backend=None):
        raise AssertionError("a refused URL reached ComfyUI")

    def release(self, comfy):
        pass

    def report_crash(self, comfy):
        pass


def settings_for(tmp_path, **env) -> Settings:
    return Settings.from_env({"DEFAULT_VERSION_ID": "demo", "DATA_ROOT": str(tmp_path / "data"),
                              "WORKFLOW_URL_TIMEOUT": "5", "LOG_SILENT": "1", **env})


def code_of(coro_factory) -> str:
    try:
        asyncio.run(coro_factory())
    except AppError as exc:
        return exc.code
    return "fetched"


def workflow_url_code(settings, target_url: str) -> str:
    async def go():
        runner = JobRunner(settings, SpecStore(REPO_ROOT / "versions"), NoComfy())
        try:
            await runner.prepare({"version_id": "demo", "workflow_url": target_url})
        finally:
            await runner.close()
    return code_of(go)


def image_url_code(settings, comfy_url: str, target_url: str) -> str:
    async def go():
        client = ComfyClient(comfy_url)
        runner = JobRunner(settings, SpecStore(REPO_ROOT / "versions"), FixedComfy(client))
        try:
            await runner.run({"version_id": "demo", "workflow": workflows.load_invert_save("a.png"),
                              "images": [{"name": "a.png", "url": target_url}]})
        finally:
            await runner.close()
            await client.close()
    return code_of(go)


def model_code(settings, target_url: str) -> str:
    try:
        fetch(settings, target_url, b"x", name="probe.safetensors")
    except AppError as exc:
        return exc.code
    return "fetched"


FETCHERS = ("workflow_url", "image_url", "model_download")


def attempt(fetcher: str, settings, comfy, target_url: str) -> tuple[str, set]:
    """The error code of one fetch, and the hosts this process connected to meanwhile (ComfyUI
    aside)."""
    comfy_port = int(comfy.url.rsplit(":", 1)[1])
    with spy() as net:
        if fetcher == "workflow_url":
            code = workflow_url_code(settings, target_url)
        elif fetcher == "image_url":
            code = image_url_code(settings, comfy.url, target_url)
        else:
            code = model_code(settings, target_url)
    return code, {c for c in net.connects if isinstance(c, tuple) and c[1] != comfy_port}


@pytest.mark.parametrize("fetcher", FETCHERS)
@pytest.mark.parametrize("host,why", ALL)
def test_every_spelling_is_refused_before_any_connection(tmp_path, comfy, bait, fetcher, host, why):
    code, connected = attempt(fetcher, settings_for(tmp_path), comfy, url(host, bait.port))
    assert code == f"url_forbidden:{why}"
    assert connected == set() and leaks(bait) == []


@pytest.mark.parametrize("fetcher", FETCHERS)
@pytest.mark.parametrize("name,why", NAMES.items())
def test_a_name_is_refused_on_its_addresses(tmp_path, comfy, bait, fetcher, name, why):
    code, connected = attempt(fetcher, settings_for(tmp_path), comfy, url(name, bait.port))
    assert code == f"url_forbidden:{why}"
    assert connected == set() and leaks(bait) == []


@pytest.fixture
def fake_dns(monkeypatch):
    """`probe<i>.example` resolves to ALL[i]'s address, for every policy built from settings."""
    answers = {f"probe{i}.example": address_of(host) for i, (host, _) in enumerate(ALL)
               if not host.startswith("metadata")}
    real = services.net.policy.system_resolve
    monkeypatch.setattr(services.net.policy, "system_resolve",
                        lambda host, port: [answers[host]] if host in answers else real(host, port))
    return answers


@pytest.mark.parametrize("fetcher", FETCHERS)
@pytest.mark.parametrize("i", [i for i, (host, _) in enumerate(ALL) if not host.startswith("metadata")])
def test_a_name_resolving_to_a_forbidden_address_is_refused_before_connecting(tmp_path, comfy, bait, fake_dns,
                                                                              fetcher, i):
    code, connected = attempt(fetcher, settings_for(tmp_path), comfy, url(f"probe{i}.example", bait.port))
    assert code == f"url_forbidden:{ALL[i][1]}"
    assert connected == set() and leaks(bait) == []


@pytest.mark.parametrize("fetcher", FETCHERS)
@pytest.mark.parametrize("i", range(len(ALL)))
def test_a_redirect_to_any_spelling_is_refused(tmp_path, comfy, bait, fetcher, i):
    # The bait is allowed by name (localhost), so the first hop is fetched; its redirect is not.
    settings = settings_for(tmp_path, FETCH_ALLOW_HOSTS="localhost")
    code, connected = attempt(fetcher, settings, comfy, f"http://localhost:{bait.port}/to/{i}")
    assert code == f"url_forbidden:{ALL[i][1]}"
    assert {host for host, port in connected} <= {"127.0.0.1", "::1"}  # the bait itself, nothing else
    assert {port for host, port in connected} == {bait.port} and leaks(bait) == []


@pytest.mark.parametrize("fetcher", FETCHERS)
@pytest.mark.parametrize("i", [i for i, (host, _) in enumerate(ALL) if not host.startswith("metadata")])
def test_a_redirect_to_a_name_resolving_to_a_forbidden_address_is_refused(tmp_path, comfy, bait, fake_dns, fetcher, i):
    settings = settings_for(tmp_path, FETCH_ALLOW_HOSTS="localhost")
    code, connected = attempt(fetcher, settings, comfy, f"http://localhost:{bait.port}/to-probe/{i}")
    assert code == f"url_forbidden:{ALL[i][1]}"
    assert {port for host, port in connected} == {bait.port} and leaks(bait) == []


@pytest.mark.parametrize("fetcher", FETCHERS)
def test_an_allowed_host_is_fetched(tmp_path, comfy, bait, fetcher):
    """The control: the same fetchers do reach a host FETCH_ALLOW_HOSTS names."""
    with LocalServer() as server:
        server.route("/w.json", static(json.dumps(workflows.image()).encode()))
        server.route("/a.png", static(_png()))
        server.route("/m.safetensors", Blob(b"weights"))
        port = server.httpd.server_address[1]
        path = {"workflow_url": "/w.json", "image_url": "/a.png", "model_download": "/m.safetensors"}[fetcher]
        settings = settings_for(tmp_path, FETCH_ALLOW_HOSTS="localhost")
        if fetcher == "model_download":
            assert fetch(settings, f"http://localhost:{port}{path}", b"weights", name="probe.safetensors").how \
                == "downloaded"
        else:
            code, _ = attempt(fetcher, settings, comfy, f"http://localhost:{port}{path}")
            assert code == "fetched"
        assert [hit[1] for hit in server.hits] == [path]


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


# --- token confusion ---------------------------------------------------------------------------

TOKEN = "hf_SECRET_never_elsewhere"


@pytest.fixture(scope="module")
def token_servers(tmp_path_factory):
    """`hf`: https, plays huggingface.co and cdn-lfs.huggingface.co (a fake resolver maps them to
    127.0.0.1); `other`: https, plays another host (localhost); `plain`: http, huggingface.co
    over plain http. All record the headers they receive."""
    folder = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_certs(folder, ["huggingface.co", "cdn-lfs.huggingface.co", "localhost", "127.0.0.1"])
    with TlsServer(cert, key) as hf, TlsServer(cert, key) as other, LocalServer() as plain:
        data = payload(2000)
        for server in (hf, other, plain):
            server.route("/m", Blob(data))
        hf.route("/to-other", lambda req: send(req, 302, b"", headers={"Location": f"https://localhost:{other.port}/m"}))
        hf.route("/to-cdn", lambda req: send(req, 302, b"", headers={
            "Location": f"https://cdn-lfs.huggingface.co:{hf.port}/m"}))
        hf.route("/to-http", lambda req: send(req, 302, b"", headers={
            "Location": f"http://huggingface.co:{plain.httpd.server_address[1]}/m"}))
        hf.route("/to-loopback", lambda req: send(req, 302, b"", headers={"Location": f"https://127.0.0.1:{other.port}/m"}))
        hf.route("/to-userinfo", lambda req: send(req, 302, b"", headers={
            "Location": f"https://huggingface.co@localhost:{other.port}/m"}))
        hf.route("/to-backslash", lambda req: send(req, 302, b"", headers={
            "Location": f"https://localhost:{other.port}\\@huggingface.co/m"}))
        yield {"ca": ca, "hf": hf, "other": other, "plain": plain, "data": data}


def token_policy() -> FetchPolicy:
    hosts = {"huggingface.co", "cdn-lfs.huggingface.co"}
    return FetchPolicy(allow_names=frozenset(hosts | {"localhost"}),
                       resolve=lambda host, port: ["127.0.0.1"] if host in hosts else
                       services.net.policy.system_resolve(host, port))


def download_via(servers, start_url: str, tmp_path):
    from services.models import downloader
    import threading

    source = trusting_source(servers["ca"], start_url, {"huggingface.co": TOKEN, "hf.co": TOKEN}, 2, token_policy())
    settings = make_settings(tmp_path)
    return downloader.download(source, tmp_path / "out", size=len(servers["data"]),
                               options=downloader.Options.from_settings(settings),
                               on_progress=lambda done, total: True, stop=threading.Event())


def auth_headers(server) -> list:
    return [hit[2].get("Authorization") for hit in server.hits]


def test_the_token_reaches_huggingface_and_its_cdn_over_https(token_servers, tmp_path):
    hf = token_servers["hf"]
    before = len(hf.hits)
    download_via(token_servers, f"https://huggingface.co:{hf.port}/to-cdn", tmp_path)
    assert auth_headers(hf)[before:] == [f"Bearer {TOKEN}", f"Bearer {TOKEN}"]
    assert [hit[2]["Host"].split(":")[0] for hit in hf.hits[before:]] == ["huggingface.co", "cdn-lfs.huggingface.co"]


@pytest.mark.parametrize("path,code", [
    ("/to-other", None),                               # another host: fetched without the token
    ("/to-http", None),                                # huggingface.co over plain http: no token
    ("/to-loopback", "url_forbidden:loopback"),        # an address literal the policy refuses
    ("/to-userinfo", "url_forbidden:userinfo"),        # https://huggingface.co@localhost/
    ("/to-backslash", "url_forbidden:userinfo"),       # https://localhost\@huggingface.co/
])
def test_a_redirect_never_carries_the_token_elsewhere(token_servers, tmp_path, path, code):
    hf, other, plain = token_servers["hf"], token_servers["other"], token_servers["plain"]
    try:
        download_via(token_servers, f"https://huggingface.co:{hf.port}{path}", tmp_path)
        got = None
    except AppError as exc:
        got = exc.code
    assert got == code
    assert hf.hits[-1][1] == path and hf.hits[-1][2].get("Authorization") == f"Bearer {TOKEN}"
    assert TOKEN not in json.dumps(other.hits + plain.hits)


@pytest.mark.parametrize("start,code", [
    ("http://127.0.0.1:{port}\\@huggingface.co/m", "url_forbidden:userinfo"),
    ("https://huggingface.co@127.0.0.1:{port}/m", "url_forbidden:userinfo"),
    ("https://huggingface.co:{port}@localhost:{port}/m", "url_forbidden:userinfo"),
    ("https://localhost:{port}/m#@huggingface.co", None),
    ("https://localhost:{port}/m?@huggingface.co", None),
])
def test_a_url_that_names_huggingface_twice_gets_no_token(token_servers, tmp_path, start, code):
    other = token_servers["other"]
    try:
        download_via(token_servers, start.format(port=other.port), tmp_path)
        got = None
    except AppError as exc:
        got = exc.code
    assert got == code
    assert TOKEN not in json.dumps(other.hits)


# --- the real Pod: /download -------------------------------------------------------------------

@pytest.fixture(scope="module")
def pod(tmp_path_factory, bait):
    # Only the bait's name is allowed (every literal spelling of it stays refused); HF_TOKEN is
    # set so a leak of it would show.
    pod = start_pod(tmp_path_factory.mktemp("pod"), env={"FETCH_ALLOW_HOSTS": "localhost", "HF_TOKEN": TOKEN,
                                                          "MODELSYNC_POLL_INTERVAL": "0.1"})
    yield pod
    pod.stop()


def downloads(pod) -> list:
    status, listing = pod.request("GET", "/downloads?limit=1000")
    assert status == 200
    return listing["downloads"]


@pytest.fixture(scope="class")
def downloader_stopped(pod):
    """modelsync is stopped: even a URL the API wrongly queued could not be fetched."""
    assert pod.ctl("stop", "modelsync").returncode == 0
    yield
    assert pod.ctl("start", "modelsync").returncode == 0


@pytest.mark.usefixtures("downloader_stopped")
class TestPodDownloadAtRequestTime:
    @pytest.mark.parametrize("host,why", ALL)
    def test_every_spelling_is_refused(self, pod, bait, host, why):
        before = len(downloads(pod))
        status, error = pod.request("POST", "/download", {"url": url(host, bait.port), "type": "loras"})
        assert (status, error["error"]) == (400, f"url_forbidden:{why}")
        assert len(downloads(pod)) == before and leaks(bait) == []

    @pytest.mark.parametrize("start,why", [
        ("http://127.0.0.1:{port}\\@huggingface.co/x.safetensors", "userinfo"),
        ("https://huggingface.co@127.0.0.1:{port}/x.safetensors", "userinfo"),
        ("http://user:pass@huggingface.co/x.safetensors", "userinfo"),
    ])
    def test_token_confusion_is_refused(self, pod, bait, start, why):
        before = len(downloads(pod))
        status, error = pod.request("POST", "/download", {"url": start.format(port=bait.port), "type": "loras"})
        assert (status, error["error"]) == (400, f"url_forbidden:{why}")
        assert len(downloads(pod)) == before and TOKEN not in json.dumps(bait.hits)


def wait_ended(pod, download_id, timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, row = pod.request("GET", f"/downloads/{download_id}")
        if row["state"] in ("done", "failed"):
            return row
        time.sleep(0.1)
    raise TimeoutError(row)


@pytest.mark.parametrize("i", range(len(LOOPBACK)))
def test_pod_download_refuses_a_redirect_to_any_loopback_spelling(pod, bait, i):
    # Only loopback targets here: the Pod's downloader runs, and a failed check must not send a
    # packet anywhere. Non-loopback redirects are refused by the same code, proven in process.
    status, queued = pod.request("POST", "/download", {"url": f"http://localhost:{bait.port}/to/{i}",
                                                       "type": "loras", "filename": f"r{i}.safetensors"})
    assert status == 202, queued
    row = wait_ended(pod, queued["download_id"])
    assert (row["state"], row["error"]) == ("failed", f"url_forbidden:{LOOPBACK[i][1]}")
    assert leaks(bait) == [] and TOKEN not in json.dumps(bait.hits)


def test_pod_download_listing_shows_no_credentials(pod, bait):
    status, queued = pod.request("POST", "/download", {"url": f"http://localhost:{bait.port}/to/0?X-Amz-Signature=SIG",
                                                       "type": "loras", "filename": "listed.safetensors"})
    assert status == 202
    shown = [d for d in downloads(pod) if d["download_id"] == queued["download_id"]][0]
    assert shown["url"] == f"http://localhost:{bait.port}/to/0" and "SIG" not in json.dumps(downloads(pod))


# --- inside an empty network namespace ---------------------------------------------------------

def test_non_loopback_probes_inside_an_empty_network_namespace():
    """tests/netns_probe.py under `unshare -n` (only loopback exists): literals, names whose DNS
    answer is forbidden, and rebinding from a public first answer to loopback, for both clients."""
    if not sys.platform.startswith("linux") or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs Linux with unshare and ip")
    proc = subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {sys.executable} -m tests.netns_probe"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip("unshare -n needs root (CAP_SYS_ADMIN)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    probes = report["probes"]
    wrong = [p for p in probes if p["got"] != p["expected"]]
    assert wrong == [] and report["secret_hits"] == 0
    refused = sum(p["got"].startswith("url_forbidden") for p in probes)
    # 31 literals x 2 clients, 29 names x 2, and per client rebinding (2 probes) plus a control.
    assert (len(probes), refused) == (126, 122)
    print(f"netns probes: {len(probes)} tried, {refused} refused by the policy, "
          f"{len(probes) - refused} unreachable by design (rebinding's checked first answer, control)")
