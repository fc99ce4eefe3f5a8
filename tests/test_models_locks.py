"""The lock file and the hash index on their own: liveness rules, heartbeats, damaged files."""
from __future__ import annotations

import json
import os
import time

from services.models.cache import Target
from services.models.index import HashIndex
from services.models.locks import LockFile, owner_alive, owner_token
from tests.model_fixtures import dead_owner

OTHER_HOST = "elsewhere~123~abcd1234"


def test_owner_liveness_rules():
    assert owner_alive(owner_token(), 0, 60)                 # this process
    assert not owner_alive(dead_owner(), 0, 60)              # this host, pid gone: dead at once
    assert owner_alive(OTHER_HOST, 10, 60)                   # another host: trusted while it beats
    assert not owner_alive(OTHER_HOST, 61, 60)               # ... and dead once it stops
    assert not owner_alive(owner_token(), 61, 60)            # a silent heartbeat wins over a live pid


def test_another_hosts_lock_is_waited_on_until_its_heartbeat_stops(tmp_path):
    target = Target.of(tmp_path, "vae", "v.pt")
    target.folder.mkdir(parents=True)
    target.lock_path.write_text(json.dumps({"owner": OTHER_HOST}))
    waits = []
    started = time.monotonic()
    with LockFile(target.lock_path, owner_token(), stale_after=0.5, on_wait=lambda: waits.append(1), poll=0.05):
        waited = time.monotonic() - started
        assert json.loads(target.lock_path.read_text())["owner"] != OTHER_HOST
    assert 0.4 < waited < 3 and len(waits) >= 5
    assert not target.lock_path.exists()
    assert [p.name for p in target.folder.iterdir()] == []  # no `.stale` leftover either


def test_a_held_lock_keeps_beating(tmp_path):
    target = Target.of(tmp_path, "vae", "v.pt")
    with LockFile(target.lock_path, owner_token(), stale_after=0.4):
        time.sleep(1.0)
        assert time.time() - os.stat(target.lock_path).st_mtime < 0.4


def test_a_lock_that_is_not_ours_any_more_is_left_alone_on_release(tmp_path):
    target = Target.of(tmp_path, "vae", "v.pt")
    with LockFile(target.lock_path, owner_token(), stale_after=60):
        os.unlink(target.lock_path)  # broken by someone who judged us dead ...
        target.lock_path.write_text(json.dumps({"owner": OTHER_HOST}))  # ... and taken
    assert json.loads(target.lock_path.read_text())["owner"] == OTHER_HOST


def test_index_remembers_only_unchanged_files(tmp_path):
    model = tmp_path / "m.bin"
    model.write_bytes(b"one")
    index = HashIndex(tmp_path / ".index.json")
    index.record(model, os.stat(model), "a" * 64)
    assert HashIndex(tmp_path / ".index.json").lookup(model, os.stat(model)) == "a" * 64
    assert index.find("a" * 64) == [model]
    replacement = tmp_path / "new.bin"
    replacement.write_bytes(b"two")
    os.replace(replacement, model)  # same size, new inode
    assert index.lookup(model, os.stat(model)) is None


def test_a_damaged_index_is_ignored_and_rewritten(tmp_path):
    model = tmp_path / "m.bin"
    model.write_bytes(b"x")
    (tmp_path / ".index.json").write_text('{"files": {"')
    index = HashIndex(tmp_path / ".index.json")
    assert index.lookup(model, os.stat(model)) is None
    index.record(model, os.stat(model), "b" * 64)
    assert json.loads((tmp_path / ".index.json").read_text())["files"][str(model)][3] == "b" * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == [".index.json", "m.bin"]
