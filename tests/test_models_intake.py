"""What `/download` and `/models/ls` accept: names, types, schemes, hashes; and what they show."""
from __future__ import annotations

import json
import os

import pytest

from services.config import REPO_ROOT
from services.errors import AppError
from services.models.cache import FILENAME_RE, MAX_NAME, cache_root
from services.models.intake import queue_download, validate_download
from services.models.listing import list_models
from services.store.db import Database
from services.store.downloads import DownloadStore
from tests.model_fixtures import fetch, make_settings, payload, server, sha  # noqa: F401
from tests.model_server import Blob

URL = "https://huggingface.co/org/repo/resolve/main/m.safetensors"


def code(**fields) -> str:
    request = {"url": URL, "type": "checkpoints", "filename": "m.safetensors", **fields}
    with pytest.raises(AppError) as err:
        validate_download(**request)
    return err.value.code


@pytest.mark.parametrize("name", [
    "", ".", "..", "../x.ckpt", "..%2fx.ckpt", "a/b.ckpt", "/etc/passwd", "a\\b.ckpt", "..\\x", "a\x00b.ckpt",
    ".hidden.ckpt", ".m.safetensors.lock", "x" * (MAX_NAME + 1), "a\nb", "é.ckpt", "~x", "a:b", 7, None,
])
def test_bad_filenames_are_refused(name):
    assert code(filename=name) == "invalid_filename"


@pytest.mark.parametrize("name", ["a..b.safetensors", "model (v2)+final.ckpt", "x" * MAX_NAME, "My Model 1.0.pt"])
def test_good_filenames_pass_unchanged(name):
    assert validate_download(URL, "loras", name).filename == name


def test_filename_rule_is_the_version_schema_rule():
    schema = json.loads((REPO_ROOT / "versions" / "schema.json").read_text())
    name = schema["$defs"]["model"]["properties"]["name"]
    assert name["pattern"] == FILENAME_RE.pattern and name["maxLength"] == MAX_NAME


@pytest.mark.parametrize("given,stored", [("checkpoints", "checkpoints"), ("unet", "diffusion_models"),
                                          ("clip", "text_encoders"), ("text_encoders", "text_encoders")])
def test_types_are_canonical(given, stored):
    assert validate_download(URL, given, "m.safetensors").type == stored


@pytest.mark.parametrize("bad", ["nope", "../loras", "loras/..", "", "Checkpoints", 3, None])
def test_unknown_types_are_refused(bad):
    assert code(type=bad).startswith("invalid_model_type:")


@pytest.mark.parametrize("url,expected", [
    ("ftp://host/x", "unsupported_scheme:ftp"),
    ("file:///etc/passwd", "unsupported_scheme:file"),
    ("s3://bucket/key", "unsupported_scheme:s3"),
    ("javascript:alert(1)", "unsupported_scheme:javascript"),
    ("/local/path", "unsupported_scheme:none"),
    ("http:///nohost", "unsupported_scheme:http"),
    ("gs://bucket-only", "unsupported_scheme:gs"),
    ("", "invalid_payload:url"),
    (None, "invalid_payload:url"),
    ("gs://[", "invalid_payload:url"),                    # urlsplit raises on it (was a 500)
    ("http://[::1", "invalid_payload:url"),
    ("http://u:p@h/x", "url_forbidden:userinfo"),
    ("https://h\\@huggingface.co/x", "url_forbidden:userinfo"),
])
def test_only_http_https_and_gs_urls_are_accepted(url, expected):
    assert code(url=url) == expected


@pytest.mark.parametrize("url", ["http://h/x", "HTTPS://h/x", "gs://bucket/dir/x"])
def test_accepted_urls(url):
    assert validate_download(url, "vae", "v.pt").url == url


def test_sha256_and_size_are_checked_and_normalized():
    assert code(sha256="abc") == "invalid_payload:sha256"
    assert code(sha256=5) == "invalid_payload:sha256"
    for size in (-1, True, "5", 1.5):
        assert code(size=size) == "invalid_payload:size"
    request = validate_download(URL, "vae", "v.pt", "AB" * 32, 10)
    assert request.sha256 == "ab" * 32 and request.size == 10


def test_queue_download_joins_the_same_target_under_an_alias(tmp_path):
    store = DownloadStore(Database(tmp_path / "state.db"))
    settings = make_settings(tmp_path)
    first = queue_download(store, settings, url=URL, type="unet", filename="m.safetensors")
    again = queue_download(store, settings, url=URL, type="diffusion_models", filename="m.safetensors")
    assert first.id == again.id and first.type == "diffusion_models" and first.state == "queued"
    with pytest.raises(AppError):
        queue_download(store, settings, url="ftp://x/y", type="vae", filename="v.pt")
    assert len(store.list()) == 1


def test_listing_shows_models_by_type_with_known_hashes_and_hides_partials(tmp_path, server):
    data = payload(5000)
    settings = make_settings(tmp_path, MODELS_DIR=str(tmp_path / "other"))
    fetch(settings, server.route("/m", Blob(data)), data, name="a.safetensors")
    root = cache_root(settings)
    (root / "checkpoints" / ".a.safetensors.host~1~ab.partial").write_bytes(b"x")
    (root / "unet").mkdir()
    (root / "unet" / "old.safetensors").write_bytes(b"u" * 3)
    sub = tmp_path / "other" / "checkpoints" / "sub"
    sub.mkdir(parents=True)
    (sub / "b.ckpt").write_bytes(b"b")
    (tmp_path / "other" / "checkpoints" / "a.safetensors").write_bytes(b"shadowed")
    listed = list_models(settings)
    assert [e["name"] for e in listed["checkpoints"]] == ["a.safetensors", "sub/b.ckpt"]
    first = listed["checkpoints"][0]
    assert first == {"name": "a.safetensors", "size": 5000, "sha256": sha(data),
                     "path": str(root / "checkpoints" / "a.safetensors")}
    assert listed["checkpoints"][1]["sha256"] is None  # never hashed: listing reads no bytes
    assert [e["name"] for e in listed["diffusion_models"]] == ["old.safetensors"]
    assert list_models(settings, type="unet") == {"diffusion_models": listed["diffusion_models"]}
    assert set(listed) >= {"loras", "vae", "text_encoders"} and listed["loras"] == []


def test_listing_refuses_unknown_types(tmp_path):
    with pytest.raises(AppError) as err:
        list_models(make_settings(tmp_path), type="../etc")
    assert err.value.code == "invalid_model_type:../etc"


def test_listing_skips_dangling_links(tmp_path):
    settings = make_settings(tmp_path)
    folder = cache_root(settings) / "vae"
    folder.mkdir(parents=True)
    os.symlink(tmp_path / "gone", folder / "dangling.pt")
    assert list_models(settings, type="vae") == {"vae": []}


# --- /download never replaces a different model file unless asked ------------------------------

def queue(settings, url, **fields):
    store = DownloadStore(Database(settings.state_db))
    return store, queue_download(store, settings, url=url, type="loras", filename="l.safetensors", **fields)


def work(settings, store):
    from services.modelsync.daemon import ModelSync
    from services.versions.spec import SpecStore

    assert ModelSync(settings, store, SpecStore(settings.versions_dir)).step()


def existing(settings, data: bytes):
    path = settings.models_dir / "loras" / "l.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_download_over_a_file_of_another_size_is_refused_at_request_time(tmp_path, server):
    settings = make_settings(tmp_path)
    path = existing(settings, b"old model")
    with pytest.raises(AppError) as err:
        queue(settings, server.route("/m", Blob(b"new")), size=3)
    assert (err.value.code, err.value.status) == ("model_exists:loras/l.safetensors", 409)
    assert path.read_bytes() == b"old model"


def test_download_over_a_known_different_file_is_refused_and_unhashed_ones_by_modelsync(tmp_path, server):
    from services.models.cache import index_path
    from services.models.index import HashIndex
    from services.models.integrity import check_file

    settings = make_settings(tmp_path)
    new = payload(3000, seed=1)
    path = existing(settings, payload(3000, seed=2))
    url = server.route("/m", Blob(new))
    # Not hashed yet: the API cannot tell without reading it, so modelsync decides.
    store, row = queue(settings, url, sha256=sha(new), size=len(new))
    work(settings, store)
    failed = store.get(row.id)
    assert (failed.state, failed.error) == ("failed", "model_exists:loras/l.safetensors")
    assert path.read_bytes() == payload(3000, seed=2)
    # Now hashed (modelsync read it): the API refuses at once.
    assert check_file(HashIndex(index_path(settings)), path, size=None, sha256=sha(new)).status == "checksum_mismatch"
    with pytest.raises(AppError) as err:
        queue(settings, url, sha256=sha(new))
    assert err.value.code == "model_exists:loras/l.safetensors"


def test_replace_true_replaces_and_keeps_the_old_file_in_quarantine(tmp_path, server):
    settings = make_settings(tmp_path)
    new = payload(3000, seed=1)
    path = existing(settings, b"old model")
    store, row = queue(settings, server.route("/m", Blob(new)), sha256=sha(new), size=len(new), replace=True)
    assert row.public()["replace"] is True
    work(settings, store)
    assert store.get(row.id).state == "done" and path.read_bytes() == new
    assert [p.read_bytes() for p in (settings.models_dir / ".quarantine" / "loras").iterdir()] == [b"old model"]


def test_the_same_file_is_simply_present(tmp_path, server):
    settings = make_settings(tmp_path)
    data = payload(2000)
    existing(settings, data)
    store, row = queue(settings, server.route("/m", Blob(data)), sha256=sha(data))
    work(settings, store)
    assert store.get(row.id).state == "done"


def test_replace_must_be_a_boolean(tmp_path):
    with pytest.raises(AppError) as err:
        queue(make_settings(tmp_path), URL, replace="yes")
    assert err.value.code == "invalid_payload:replace"


def test_download_listings_show_no_credentials(tmp_path):
    store = DownloadStore(Database(tmp_path / "state.db"))
    # Rows from before the fetch policy may hold user:password; none can be queued now.
    row = store.enqueue(url="https://user:pa55@mirror.example:8443/m.safetensors?X-Amz-Signature=SIG#f",
                        type="loras", filename="m.safetensors")
    assert row.public()["url"] == "https://mirror.example:8443/m.safetensors"
    assert "pa55" not in json.dumps([d.public() for d in store.list()])
    with pytest.raises(AppError) as err:
        validate_download("https://user:pa55@mirror.example/m", "loras", "m.safetensors")
    assert err.value.code == "url_forbidden:userinfo"
