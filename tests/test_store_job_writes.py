"""The job store's fewer writes per job keep what the rows say: a claim records when the job
first started in its lease write, a deferred ComfyUI attempt count lands with the job's end, and
the threads of one process share the write lock without SQLite's sleeping busy handler."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from services.store import leases
from services.store.db import Database
from services.store.jobs import JobStore


@pytest.fixture
def store(tmp_path):
    db = Database(tmp_path / "state.db")
    yield JobStore(db)
    db.close()


def test_the_first_claim_records_started_at_and_an_adoption_keeps_it(store):
    job, _ = store.create("{}")
    claimed = store.claim("worker-a")
    assert (claimed.id, claimed.state, claimed.attempts, claimed.owner) == (job.id, "running", 1, "worker-a")
    assert claimed.started_at is not None and claimed.started_at == store.get(job.id).started_at
    leases.expire(store.db, "jobs", "worker-a")  # worker-a died: its lease lapses
    adopted = store.claim("worker-b")
    assert (adopted.id, adopted.owner, adopted.attempts) == (job.id, "worker-b", 2)
    assert adopted.started_at == claimed.started_at


def test_a_deferred_attempt_count_is_written_with_the_end_and_otherwise_kept(store):
    done, _ = store.create("{}", owner="w")
    failed, _ = store.create("{}", owner="w")
    assert store.heartbeat("w", failed.id, comfy_attempts=2)
    assert store.finish("w", done.id, {"outputs": []}, comfy_attempts=1)
    assert store.fail("w", failed.id, "no_outputs", "nothing saved")
    assert (store.get(done.id).state, store.get(done.id).comfy_attempts) == ("succeeded", 1)
    assert (store.get(failed.id).state, store.get(failed.id).comfy_attempts) == ("failed", 2)


def test_writers_in_many_threads_all_commit(store):
    job, _ = store.create("{}", owner="w")
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(50):
                with store.db.write() as conn:
                    conn.execute("UPDATE jobs SET comfy_attempts = comfy_attempts + 1 WHERE id = ?", (job.id,))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and store.get(job.id).comfy_attempts == 400


def test_a_nested_write_still_fails_instead_of_waiting_forever(store):
    with store.db.write():
        with pytest.raises(sqlite3.OperationalError):
            with store.db.write():
                pass
