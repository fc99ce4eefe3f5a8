"""verify_models and its CLI: the hash index, shared files, --fix, exit codes and output."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from services.config import REPO_ROOT
from services.models import integrity
from services.models.locks import owner_token
from services.models.verify import verify_models
from services.versions.spec import SpecStore
from tests.model_fixtures import env_for, make_settings, payload, server, sha, write_spec  # noqa: F401
from tests.model_server import Blob


def model(server, name: str, data: bytes, type: str = "checkpoints", route: str | None = None) -> dict:
    route = route or f"/{name}"
    server.route(route, Blob(data))
    return {"name": name, "type": type, "url": server.url + route, "size": len(data), "sha256": sha(data)}


def run(settings, version_id: str, fix: bool):
    spec = SpecStore(settings.versions_dir).load(version_id)
    return verify_models(settings, spec.models, fix=fix, owner=owner_token())


def cli(tmp_path, *args: str, entry=("-m", "services.models", "verify")):
    env = {"PATH": os.environ["PATH"], **env_for(tmp_path)}
    return subprocess.run([sys.executable, *entry, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_fix_downloads_then_a_warm_verify_reads_no_bytes(tmp_path, server, monkeypatch):
    a, b = payload(70_000, 1), payload(30_000, 2)
    settings = make_settings(tmp_path)
    write_spec(settings, "v1", [model(server, "a.safetensors", a), model(server, "b.pt", b, "unet")])
    assert [r.status for r in run(settings, "v1", fix=False)] == ["missing", "missing"]
    assert [r.status for r in run(settings, "v1", fix=True)] == ["fixed", "fixed"]

    def no_reading(*args, **kwargs):
        raise AssertionError("an unchanged file was read again")

    monkeypatch.setattr(integrity, "hash_into", no_reading)
    reports = run(settings, "v1", fix=False)
    assert [(r.status, r.sha256) for r in reports] == [("verified", sha(a)), ("verified", sha(b))]
    assert reports[1].type == "diffusion_models" and "/diffusion_models/b.pt" in reports[1].path


def test_a_file_changed_in_place_is_hashed_again_and_caught(tmp_path, server):
    data = payload(40_000)
    settings = make_settings(tmp_path)
    write_spec(settings, "v1", [model(server, "a.safetensors", data)])
    [fixed] = run(settings, "v1", fix=True)
    path = fixed.path
    with open(path, "r+b") as f:  # same size, other bytes, later mtime
        f.write(b"\0" * 10)
    [report] = run(settings, "v1", fix=False)
    assert report.status == "checksum_mismatch" and report.error == "model_missing:a.safetensors"
    [again] = run(settings, "v1", fix=True)
    assert again.status == "fixed" and open(path, "rb").read() == data


def test_wrong_size_is_caught_without_hashing(tmp_path, server, monkeypatch):
    data = payload(10_000)
    settings = make_settings(tmp_path)
    write_spec(settings, "v1", [model(server, "a.safetensors", data)])
    target = settings.comfy_cache_root / "models" / "checkpoints" / "a.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"short")
    monkeypatch.setattr(integrity, "hash_into", lambda *a, **k: pytest.fail("hashed a file of the wrong size"))
    [report] = run(settings, "v1", fix=False)
    assert report.status == "size_mismatch" and report.size == 5


def test_two_versions_naming_one_file_share_one_copy(tmp_path, server):
    data = payload(50_000)
    settings = make_settings(tmp_path)
    blob = Blob(data)
    server.route("/x", blob)
    entry = {"name": "shared.safetensors", "type": "checkpoints", "url": server.url + "/x", "size": len(data),
             "sha256": sha(data)}
    write_spec(settings, "v1", [entry])
    write_spec(settings, "v2", [entry, {**entry, "name": "alias.safetensors", "type": "loras"}])
    assert [r.status for r in run(settings, "v1", fix=True)] == ["fixed"]
    v2 = run(settings, "v2", fix=True)
    assert [r.status for r in v2] == ["verified", "fixed"]
    assert os.stat(v2[0].path).st_ino == os.stat(v2[1].path).st_ino  # hard link: one copy on disk
    assert len(blob.requests) == 1


def test_failed_fix_reports_the_download_error(tmp_path, server):
    settings = make_settings(tmp_path)
    write_spec(settings, "v1", [{"name": "gone.ckpt", "type": "vae", "url": server.url + "/404", "size": 3}])
    [report] = run(settings, "v1", fix=True)
    assert (report.status, report.error, report.ok) == ("failed", "download_failed:404", False)


def test_cli_json_report_and_exit_codes(tmp_path, server):
    data = payload(20_000)
    settings = make_settings(tmp_path)
    write_spec(settings, "v1", [model(server, "a.safetensors", data)])
    missing = cli(tmp_path, "--version", "v1", "--json")
    assert missing.returncode == 1, missing.stderr
    report = json.loads(missing.stdout)
    assert report["ok"] is False and report["models"][0]["error"] == "model_missing:a.safetensors"
    fixed = cli(tmp_path, "--version", "v1", "--fix")
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.startswith("verify v1: 1/1 models verified (1 downloaded)")
    assert len(fixed.stdout.strip().splitlines()) == 1
    thin = cli(tmp_path, "--version", "v1", entry=("scripts/verify_models.py",))
    assert thin.returncode == 0 and "1/1 models verified (0 downloaded)" in thin.stdout


def test_cli_unknown_version_exits_2_with_one_line(tmp_path):
    proc = cli(tmp_path, "--version", "ghost")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("verify: unknown_version:ghost")
    assert "Traceback" not in proc.stderr
    proc = cli(tmp_path, "--version", "../etc", "--json")
    assert proc.returncode == 2 and json.loads(proc.stdout)["error"] == "invalid_version_id:../etc"
