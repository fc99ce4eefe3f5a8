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
    first = queue_download(store, url=URL, type="unet", filename="m.safetensors")
    again = queue_download(store, url=URL, type="diffusion_models", filename="m.safetensors")
    assert first.id == again.id and first.type == "diffusion_models" and first.state == "queued"
    with pytest.raises(AppError):
        queue_download(store, url="ftp://x/y", type="vae", filename="v.pt")
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
