"""Real processes: two downloaders racing for one target, the modelsync program killed and
restarted, stopped with SIGTERM, and sweeping what dead processes left."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.config import REPO_ROOT
from services.models.cache import Target, cache_root
from services.models.intake import queue_download
from services.models.locks import owner_token
from services.modelsync.daemon import ModelSync
from services.store.db import Database
from services.store.downloads import DownloadStore
from services.versions.spec import SpecStore
from tests.model_fixtures import dead_owner, env_for, litter, make_settings, payload, server, sha, write_spec  # noqa: F401
from tests.model_server import Blob

MiB = 1 << 20


def spawn(tmp_path: Path, args: list[str], log_name: str, **env: str) -> subprocess.Popen:
    full = {"PATH": os.environ["PATH"], **env_for(tmp_path, **env)}
    log = open(tmp_path / log_name, "wb")
    return subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=full, stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def race(tmp_path, server, locks: str) -> tuple[Blob, bytes, Target]:
    """Two `verify --fix` processes fetch the same 2 MiB model, throttled to last a second so
    that they overlap even on a busy machine."""
    data = payload(2 * MiB)
    blob = Blob(data, rate=2 * MiB)
    settings = make_settings(tmp_path)
    write_spec(settings, "v1", [{"name": "m.safetensors", "type": "checkpoints", "url": server.route("/m", blob),
                                 "size": len(data), "sha256": sha(data)}])
    env = {"DOWNLOAD_LOCKS": locks, "DOWNLOAD_SEGMENTS": "1"}
    procs = [spawn(tmp_path, ["-m", "services.models", "verify", "--version", "v1", "--fix"], f"p{i}.log", **env)
             for i in range(2)]
    assert [p.wait(timeout=30) for p in procs] == [0, 0], [(tmp_path / f"p{i}.log").read_text() for i in range(2)]
    return blob, data, Target.of(cache_root(settings), "checkpoints", "m.safetensors")


def test_two_processes_with_a_lock_that_does_nothing_still_leave_one_verified_file(tmp_path, server):
    blob, data, target = race(tmp_path, server, locks="0")
    assert [r["range"] for r in blob.requests] == ["bytes=0-", "bytes=0-"]  # both really downloaded
    assert target.path.read_bytes() == data
    assert sorted(p.name for p in target.folder.iterdir()) == ["m.safetensors"]  # no partial, no lock


def test_with_the_lock_the_second_process_joins_the_first(tmp_path, server):
    blob, data, target = race(tmp_path, server, locks="1")
    assert len(blob.requests) == 1 and blob.sent == len(data)
    assert target.path.read_bytes() == data and litter(target.folder) == []


def modelsync(tmp_path, log_name: str = "modelsync.log", **env: str) -> subprocess.Popen:
    return spawn(tmp_path, ["-m", "services.modelsync"], log_name, MODELSYNC_POLL_INTERVAL="0.05",
                 DOWNLOAD_SEGMENTS="1", **env)


def test_sigkilled_modelsync_resumes_from_its_partial_without_fetching_finished_bytes(tmp_path, server):
    data = payload(6 * MiB)
    blob = Blob(data, rate=4 * MiB)
    settings = make_settings(tmp_path)
    store = DownloadStore(Database(settings.state_db))
    row = queue_download(store, settings, url=server.route("/m", blob), type="loras", filename="l.safetensors",
                         sha256=sha(data), size=len(data))
    target = Target.of(settings.models_dir, "loras", "l.safetensors")
    first = modelsync(tmp_path, "first.log")
    try:
        partial = wait_for(lambda: next((p for p in target.partials() if p.stat().st_size >= MiB), None),
                           what="a partial of 1 MiB")
        # The row's progress follows the file by one heartbeat: wait for it rather than race it.
        wait_for(lambda: (r := store.get(row.id)).state == "running" and r.bytes_done > 0, what="progress in the row")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    held = partial.stat().st_size
    assert 0 < held < len(data) and not target.path.exists()

    second = modelsync(tmp_path, "second.log")
    try:
        done = wait_for(lambda: (r := store.get(row.id)).state in ("done", "failed") and r, what="the row to end")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=10)
    assert done.state == "done", done.detail
    assert (done.sha256, done.bytes_done, done.path) == (sha(data), len(data), str(target.path))
    assert target.path.read_bytes() == data and litter(target.folder) == []
    assert [r["range"] for r in blob.requests] == ["bytes=0-", f"bytes={held}-"]
    assert done.attempts == 2


def test_sigterm_stops_between_chunks_keeps_the_partial_and_exits_0(tmp_path, server):
    data = payload(6 * MiB)
    blob = Blob(data, rate=4 * MiB)
    settings = make_settings(tmp_path)
    store = DownloadStore(Database(settings.state_db))
    queue_download(store, settings, url=server.route("/m", blob), type="vae", filename="v.pt", size=len(data))
    target = Target.of(settings.models_dir, "vae", "v.pt")
    proc = modelsync(tmp_path, LOG_SILENT="0")
    wait_for(lambda: any(p.stat().st_size > 0 for p in target.partials()), what="a partial")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 3
    [partial] = target.partials()
    assert 0 < partial.stat().st_size < len(data) and not target.path.exists()
    assert not target.lock_path.exists()
    events = [json.loads(line)["event"] for line in (tmp_path / "modelsync.log").read_text().splitlines()
              if line.startswith("{")]
    assert events[-2:] == ["download_paused", "modelsync_stop"]


def test_modelsync_keeps_the_active_versions_models_present(tmp_path, server):
    a, b = payload(300_000, 1), payload(200_000, 2)
    settings = make_settings(tmp_path)
    write_spec(settings, "v1", [
        {"name": "a.safetensors", "type": "checkpoints", "url": server.route("/a", Blob(a)), "sha256": sha(a)},
        {"name": "b.safetensors", "type": "clip", "url": server.route("/b", Blob(b)), "size": len(b)},
    ])
    proc = modelsync(tmp_path, ACTIVE_VERSIONS="v1 ghost")
    root = cache_root(settings)
    try:
        wait_for(lambda: (root / "text_encoders" / "b.safetensors").exists()
                 and (root / "checkpoints" / "a.safetensors").exists(), what="both models")
        (root / "checkpoints" / "a.safetensors").unlink()  # someone deletes a model: it comes back
        wait_for(lambda: (root / "checkpoints" / "a.safetensors").exists(), what="the model to come back")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert (root / "checkpoints" / "a.safetensors").read_bytes() == a
    log = (tmp_path / "modelsync.log").read_text()
    assert log.count('"active_version_unusable"') == 1 and "unknown_version:ghost" in log


def test_start_sweeps_dead_locks_and_unwanted_partials_but_keeps_wanted_ones(tmp_path):
    settings = make_settings(tmp_path, ACTIVE_VERSIONS="v1")
    write_spec(settings, "v1", [{"name": "wanted.safetensors", "type": "loras",
                                 "url": "http://127.0.0.1:9/wanted", "size": 10}])
    folder = cache_root(settings) / "loras"
    folder.mkdir(parents=True)
    dead, alive = dead_owner(), owner_token()
    files = {
        f".wanted.safetensors.{dead}.partial": True,     # resumed later: kept
        f".orphan.safetensors.{dead}.partial": False,    # nobody wants it: removed
        f".orphan.safetensors.{alive}.partial": True,    # a live process is writing it
        ".wanted.safetensors.lock": False,               # lock of a dead owner
        f".x.lock.{dead}.stale": False,
        "model.safetensors": True,
    }
    for name in files:
        (folder / name).write_text(json.dumps({"owner": dead}) if name.endswith(".lock") else "x")
    ModelSync(settings, DownloadStore(Database(settings.state_db)), SpecStore(settings.versions_dir)).sweep()
    assert sorted(p.name for p in folder.iterdir()) == sorted(n for n, kept in files.items() if kept)


def test_a_live_lock_is_waited_on_and_a_dead_one_is_broken(tmp_path, server):
    from services.models.fetch import ensure_model
    from services.models.index import HashIndex

    data = payload(10_000)
    settings = make_settings(tmp_path)
    target = Target.of(cache_root(settings), "vae", "v.pt")
    target.folder.mkdir(parents=True)
    target.lock_path.write_text(json.dumps({"owner": dead_owner()}))
    got = ensure_model(target, server.route("/v", Blob(data)), size=len(data), sha256=sha(data), settings=settings,
                       index=HashIndex(tmp_path / "i.json"), owner=owner_token())
    assert got.how == "downloaded" and not target.lock_path.exists()

    holder = subprocess.Popen(["sleep", "30"])
    try:
        host = owner_token().split("~")[0]
        target.lock_path.write_text(json.dumps({"owner": f"{host}~{holder.pid}~live"}))
        waits = []

        def on_progress(done, total):
            waits.append(done)
            if len(waits) == 3:
                target.lock_path.unlink()  # the holder finishes
            return True

        other = Target.of(cache_root(settings), "vae", "v.pt")
        got = ensure_model(other, server.url + "/v", size=len(data), sha256=sha(data), settings=settings,
                           index=HashIndex(tmp_path / "i.json"), owner=owner_token(), on_progress=on_progress)
        assert got.how == "present" and len(waits) >= 3
    finally:
        holder.kill()
        holder.wait()
