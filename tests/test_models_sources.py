"""Sources: which host sees which token, redirects, secrets kept out of errors and logs, gs://,
and the free-disk check on a real 2 MiB tmpfs."""
from __future__ import annotations

import io
import json
import subprocess
import threading
from pathlib import Path

import pytest

from services import logs
from services.errors import AppError
from services.models import downloader
from services.models.sources import host_tokens, open_source, public_url, token_for
from services.net.policy import FetchPolicy
from services.net.target import parse_target
from tests.http_server import free_port, send
from tests.tls_server import TlsServer, make_certs, trusting_source
from tests.model_fixtures import fetch, litter, make_settings, payload, server, sha, target  # noqa: F401
from tests.model_server import Blob, Status


def keep_going(done, total):
    return True


def download_with(source, partial: Path, size: int, settings) -> tuple[int, str]:
    return downloader.download(source, partial, size=size, options=downloader.Options.from_settings(settings),
                               on_progress=keep_going, stop=threading.Event())


@pytest.mark.parametrize("url,expected", [
    ("https://huggingface.co/org/repo/resolve/main/m.safetensors", "hf"),
    ("https://cdn-lfs-us-1.hf.co/repos/x?sig=1", "hf"),
    ("https://cas-bridge.xethub.hf.co/xet/abc", "hf"),
    ("https://cdn-lfs.huggingface.co/x", "hf"),
    ("https://HuggingFace.co/x", "hf"),
    ("https://civitai.com/api/download/models/1", "civitai"),
    ("https://www.civitai.com/api/download/models/1", "civitai"),
    ("https://evilhuggingface.co/x", None),
    ("https://huggingface.co.evil.example/x", None),
    ("https://hf.co.evil.example/x", None),
    ("https://example.com/huggingface.co", None),
    ("http://127.0.0.1:8000/x", None),
    ("https://huggingface.co./x", "hf"),
    ("http://huggingface.co/x", None),        # never over plain http
    ("http://civitai.com/api/download/models/1", None),
])
def test_each_token_goes_to_its_own_hosts_only(url, expected):
    settings = make_settings(Path("/nonexistent"), HF_TOKEN="hf", CIVITAI_TOKEN="civitai")
    assert token_for(parse_target(url), host_tokens(settings)) == expected


def test_no_token_set_means_no_authorization():
    assert host_tokens(make_settings(Path("/nonexistent"))) == {}


@pytest.fixture
def tls_server(tmp_path):
    """An https server on 127.0.0.1 (tokens travel over https only) and its CA."""
    ca, cert, key = make_certs(tmp_path, ["127.0.0.1", "localhost"])
    with TlsServer(cert, key) as server:
        server.ca = ca
        yield server


LOOPBACK_OK = FetchPolicy(allow_private=True)  # these tests' servers listen on loopback


def test_token_is_not_sent_on_a_redirect_to_another_host(tmp_path, tls_server):
    server = tls_server
    data = payload(40_000)
    blob = Blob(data)
    server.route("/m", blob)
    server.route("/r", lambda req: send(req, 302, b"", headers={"Location": f"https://localhost:{server.port}/m"}))
    # 127.0.0.1 plays the token's host and localhost the CDN it redirects to.
    source = trusting_source(server.ca, server.url + "/r", {"127.0.0.1": "s3cret"}, 2, LOOPBACK_OK)
    settings = make_settings(tmp_path)
    assert download_with(source, tmp_path / "out", len(data), settings) == (len(data), sha(data))
    redirect_hit = [h for h in server.hits if h[1] == "/r"][0]
    assert redirect_hit[2].get("Authorization") == "Bearer s3cret"
    assert [r["auth"] for r in blob.requests] == [None]


def test_token_is_sent_when_the_redirect_stays_on_the_host(tmp_path, tls_server):
    server = tls_server
    data = payload(1000)
    blob = Blob(data)
    server.route("/m", blob)
    server.route("/r", lambda req: send(req, 302, b"", headers={"Location": "/m"}))
    source = trusting_source(server.ca, server.url + "/r", {"127.0.0.1": "s3cret"}, 2, LOOPBACK_OK)
    download_with(source, tmp_path / "out", len(data), make_settings(tmp_path))
    assert [r["auth"] for r in blob.requests] == ["Bearer s3cret"]


def test_token_is_not_sent_over_plain_http(tmp_path, server):
    data = payload(1000)
    blob = Blob(data)
    server.route("/m", blob)
    source = trusting_source(Path("/nonexistent"), server.url + "/m", {"127.0.0.1": "s3cret"}, 2, LOOPBACK_OK)
    download_with(source, tmp_path / "out", len(data), make_settings(tmp_path))
    assert [r["auth"] for r in blob.requests] == [None]


def test_redirect_to_a_file_url_is_refused(tmp_path, server):
    server.route("/r", lambda req: send(req, 302, b"", headers={"Location": "file:///etc/passwd"}))
    with pytest.raises(AppError) as err:
        fetch(make_settings(tmp_path), server.url + "/r", b"x")
    assert err.value.code == "unsupported_scheme:file"


def test_redirect_loops_end(tmp_path, server):
    server.route("/r", lambda req: send(req, 302, b"", headers={"Location": "/r"}))
    with pytest.raises(AppError) as err:
        fetch(make_settings(tmp_path), server.url + "/r", b"x")
    assert err.value.code == "download_failed:redirects"


def test_signed_query_and_tokens_stay_out_of_errors_and_logs(tmp_path, server):
    stream = io.StringIO()
    logs.configure("info", stream=stream)
    blob = Blob(b"abc")
    server.route("/m", blob)
    settings = make_settings(tmp_path, HF_TOKEN="hf_tok", LOG_SILENT="0")
    fetch(settings, server.url + "/m?X-Amz-Signature=SIGSECRET", b"abc")
    with pytest.raises(AppError) as err:
        fetch(settings, server.url + "/missing?X-Amz-Signature=SIGSECRET", b"other", name="n.safetensors")
    logs.configure("info", silent=True)
    shown = json.dumps(err.value.as_dict()) + stream.getvalue()
    assert "model_downloaded" in shown and "download_failed:404" in shown
    assert "SIGSECRET" not in shown and "hf_tok" not in shown
    assert public_url("https://u:p@h.example:8443/a/b?sig=1#f") == "https://h.example:8443/a/b"


def test_disk_too_small_is_refused_before_any_byte_is_written(tmp_path, server):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        settings = make_settings(tmp_path, COMFY_CACHE_ROOT=str(mount))
        data = payload(3 << 20)
        blob = Blob(data)
        server.route("/m", blob)
        with pytest.raises(AppError) as err:
            fetch(settings, server.url + "/m", data)
        assert err.value.code == "insufficient_disk"
        assert err.value.extra["needed"] == len(data) and err.value.extra["free"] < len(data)
        assert blob.requests == []  # the size was known: not even a request
        with pytest.raises(AppError) as err:
            fetch(settings, server.url + "/m", data, size=None)
        assert err.value.code == "insufficient_disk"  # learned from Content-Length, before the body
        t = target(settings)
        assert not t.path.exists() and litter(t.folder) == []
        server.route("/nolength", Blob(data, length=False))
        with pytest.raises(AppError) as err:  # no size anywhere: the disk fills up mid-file
            fetch(settings, server.url + "/nolength", data, size=None)
        assert err.value.code == "insufficient_disk"
        assert not t.path.exists() and litter(t.folder) == []  # the partial went, freeing the disk
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def gcs_emulator(monkeypatch):
    from gcp_storage_emulator.server import create_server

    port = free_port()
    emulator = create_server("127.0.0.1", port, in_memory=True, default_bucket="models")
    emulator.start()
    # google-cloud-storage reads this itself; our settings never need to know.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    try:
        yield
    finally:
        emulator.stop()


def _upload(name: str, data: bytes) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials())
    client.bucket("models").blob(name).upload_from_string(data)


@pytest.mark.parametrize("size", [200_000, 3 << 20])  # one stream, then parallel pieces
def test_gs_objects_download_through_google_cloud_storage(tmp_path, gcs_emulator, size):
    data = payload(size)
    _upload("dir/m.safetensors", data)
    settings = make_settings(tmp_path, GCS_PROJECT="test")
    got = fetch(settings, "gs://models/dir/m.safetensors", data)
    assert got.path.read_bytes() == data and got.sha256 == sha(data)


def test_missing_gs_object_is_download_failed_404(tmp_path, gcs_emulator):
    with pytest.raises(AppError) as err:
        fetch(make_settings(tmp_path, GCS_PROJECT="test"), "gs://models/none.safetensors", b"x")
    assert err.value.code == "download_failed:404"


def test_sources_open_by_scheme():
    settings = make_settings(Path("/nonexistent"))
    assert type(open_source("gs://b/o", settings)).__name__ == "GcsSource"
    assert type(open_source("https://h/o", settings)).__name__ == "HttpSource"


def test_429_without_retry_after_backs_off_then_succeeds(tmp_path, server):
    data = payload(1000)
    blob = Blob(data, faults=[Status(429), Status(429)])
    assert fetch(make_settings(tmp_path), server.route("/m", blob), data).path.read_bytes() == data
