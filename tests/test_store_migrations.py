"""The state database's schema versions (services/store/migrations.py): a database on a user's
volume, written by any earlier release, is migrated in place and keeps its jobs; a newer one is
refused. Fixtures: tests/fixtures/store/schema_v1.sql is services/store/db.py's SCHEMA at commit
9f1517f (before any migration), rows_v1.sql rows in every state as that code wrote them, and
envelopes_unversioned.sql what SCHEMA added next, before versions (user_version 0)."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.config import REPO_ROOT
from services.errors import AppError
from services.store.db import Database
from services.store.downloads import DownloadStore
from services.store.envelopes import EnvelopeLedger
from services.store.jobs import JobStore
from services.store.migrations import LATEST, MIGRATIONS, user_version

FIXTURES = Path(__file__).parent / "fixtures" / "store"
# downloads.py's own ALTER before migrations existed (run by every DownloadStore at start).
OLD_ALTER = "ALTER TABLE downloads ADD COLUMN replace_existing INTEGER NOT NULL DEFAULT 0"


def old_database(path: Path, *scripts: str) -> Path:
    """A database as older code left it: WAL, user_version 0, the fixture scripts run in order."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for script in scripts:
        conn.executescript((FIXTURES / script).read_text() if script.endswith(".sql") else script)
    assert user_version(conn) == 0
    conn.close()
    return path


# What migrations 4 and later add to an existing job row, at their defaults.
ADDED_JOB_COLUMNS = {"comfy_attempts": 0, "webhook": None, "timings_ms": None, "request_sha256": None,
                     "backend": None}


def rows(path: Path, table: str) -> list[dict]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY rowid")]
    finally:
        conn.close()


def schema(path: Path) -> dict:
    """Every table's columns (name, type, not null, default, pk) and every index, by name."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {"version": user_version(conn),
                "tables": {t: [tuple(c[1:]) for c in conn.execute(f"PRAGMA table_info({t})")] for t in tables},
                "indexes": sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'"))}
    finally:
        conn.close()


def fresh_schema(tmp_path: Path) -> dict:
    Database(tmp_path / "fresh" / "state.db").close()
    return schema(tmp_path / "fresh" / "state.db")


def test_migrations_are_numbered_in_order():
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))
    assert LATEST >= 4  # 1: the 9f1517f schema, 2: downloads.replace_existing, 3: envelopes, 4: comfy_attempts


def test_a_database_from_9f1517f_is_migrated_and_keeps_every_row(tmp_path):
    path = old_database(tmp_path / "state.db", "schema_v1.sql", "rows_v1.sql")
    before = {t: rows(path, t) for t in ("jobs", "downloads", "comfy_state", "comfy_leases")}
    assert {r["state"] for r in before["jobs"]} == {"queued", "running", "succeeded", "failed", "cancelled"}
    assert {r["state"] for r in before["downloads"]} == {"queued", "running", "done", "failed", "cancelled"}

    db = Database(path)
    assert db.migrated == tuple(range(1, LATEST + 1))
    assert schema(path) == fresh_schema(tmp_path)  # same shape as a database made today
    assert rows(path, "jobs") == [{**r, **ADDED_JOB_COLUMNS} for r in before["jobs"]]
    assert rows(path, "downloads") == [{**r, "replace_existing": 0} for r in before["downloads"]]
    # The one ComfyUI's runtime is backend 0's; leases were heartbeats, not history (migration 8).
    assert rows(path, "comfy_backends") == [{"backend": 0, "runtime": r["runtime"], "target": None, "switcher": None,
                                             "switch_heartbeat": None} for r in before["comfy_state"]]
    assert rows(path, "comfy_leases") == []

    # and it works: old rows through today's stores, new rows beside them
    jobs, downloads = JobStore(db), DownloadStore(db)
    assert jobs.get("job-succeeded").public()["result"] == {"images": [{"filename": "a.png"}]}
    assert jobs.get("job-failed").public()["error"] == "worker_lost"
    claimed = jobs.claim("api-9")
    assert (claimed.id, claimed.state, claimed.owner) == ("job-queued", "running", "api-9")
    new, created = jobs.create('{"workflow": {}}', job_id="job-new")
    assert created and new.state == "queued"
    assert jobs.finish("api-9", "job-queued", {"images": []})
    assert jobs.get("job-queued").state == "succeeded"
    assert downloads.get("dl-done").public()["replace"] is False
    queued = downloads.enqueue(url="https://huggingface.co/o/r/resolve/main/n.safetensors", type="loras",
                               filename="n.safetensors", replace=True)
    assert downloads.get(queued.id).replace_existing == 1
    assert downloads.enqueue(url="https://example.com/q", type="loras", filename="q.safetensors").id == "dl-queued"
    ledger = EnvelopeLedger(db)
    assert ledger.claim("k" * 64, "job-new") == "job-new"
    assert ledger.claim("k" * 64, "job-other") == "job-new"  # a replay finds the first job
    db.close()
    assert Database(path).migrated == ()


def test_a_version_3_database_gains_comfy_attempts_and_its_jobs_run_on(tmp_path):
    """The schema of the release before JOB_MAX_ATTEMPTS (user_version 3), with rows in every
    state: migrated to the latest, every job kept, a running one resumed with its count at 0."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for migration in MIGRATIONS[:3]:
        migration.apply(conn)
    conn.execute("PRAGMA user_version = 3")
    conn.executescript((FIXTURES / "rows_v1.sql").read_text())
    conn.close()
    before = rows(path, "jobs")

    db = Database(path)
    assert db.migrated == tuple(range(4, LATEST + 1))
    assert schema(path) == fresh_schema(tmp_path)
    assert rows(path, "jobs") == [{**r, **ADDED_JOB_COLUMNS} for r in before]
    jobs = JobStore(db)
    running = next(r["id"] for r in before if r["state"] == "running")
    assert jobs.get(running).public()["comfy_attempts"] == 0
    assert jobs.heartbeat(jobs.get(running).owner, running, comfy_attempts=2)
    assert jobs.get(running).comfy_attempts == 2


def test_a_database_made_today_is_at_the_latest_version_and_reopening_changes_nothing(tmp_path):
    path = tmp_path / "state.db"
    first = Database(path)
    assert first.migrated == tuple(range(1, LATEST + 1))
    assert user_version(first.connection()) == LATEST
    JobStore(first).create('{"workflow": {}}', job_id="j")
    before = (schema(path), rows(path, "jobs"))
    again = Database(path)
    assert again.migrated == ()
    assert again.connection().total_changes == 0  # nothing written, not even the version
    assert (schema(path), rows(path, "jobs")) == before


OPEN_AT_ONCE = """
import json, sys, time
from pathlib import Path
ready, go, path = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
from services.store.db import Database
ready.touch()
while not go.exists():
    time.sleep(0.001)
print(json.dumps(list(Database(path).migrated)))
"""


@pytest.mark.parametrize("attempt", range(3))
def test_two_processes_opening_an_old_database_at_once_migrate_it_once(tmp_path, attempt):
    path = old_database(tmp_path / "state.db", "schema_v1.sql", "rows_v1.sql")
    before = rows(path, "jobs")
    go = tmp_path / "go"
    children = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, str(tmp_path / f"ready{i}"), str(go), str(path)],
                                 cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(2)]
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline, "the children did not start"
        time.sleep(0.005)
    go.touch()
    applied = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        applied.append(json.loads(out))
    assert sorted(v for one in applied for v in one) == list(range(1, LATEST + 1))  # each migration once
    assert [] in applied  # the other process found them done
    assert user_version(sqlite3.connect(path)) == LATEST
    assert rows(path, "jobs") == [{**r, **ADDED_JOB_COLUMNS} for r in before]


def test_a_database_from_a_newer_release_is_refused(tmp_path):
    path = tmp_path / "state.db"
    Database(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.execute("CREATE TABLE from_the_future (x)")
    conn.close()
    before = schema(path)
    with pytest.raises(AppError) as err:
        Database(path)
    assert err.value.code == "store_too_new"
    assert f"schema version {LATEST + 1}" in err.value.detail and str(path) in err.value.detail
    assert schema(path) == before  # untouched, not downgraded


@pytest.mark.parametrize("scripts", [
    # the last SCHEMA before versions, and the API ran: envelopes and replace_existing both there
    ("schema_v1.sql", "envelopes_unversioned.sql", OLD_ALTER),
    ("schema_v1.sql", "envelopes_unversioned.sql"),  # only `comfyui` opened it: no replace_existing
    ("schema_v1.sql", OLD_ALTER),                    # a release between: replace_existing, no envelopes
], ids=["all", "envelopes-only", "replace-only"])
def test_a_database_from_the_code_before_versions_is_adopted(tmp_path, scripts):
    path = old_database(tmp_path / "state.db", *scripts, "rows_v1.sql")
    before = rows(path, "jobs")
    db = Database(path)
    assert db.migrated == tuple(range(1, LATEST + 1))
    assert schema(path) == fresh_schema(tmp_path)
    assert rows(path, "jobs") == [{**r, **ADDED_JOB_COLUMNS} for r in before]
    assert DownloadStore(db).enqueue(url="https://example.com/n", type="vae", filename="n.pt",
                                     replace=True).replace_existing == 1
    assert EnvelopeLedger(db).claim("e" * 64, "job-queued") == "job-queued"
