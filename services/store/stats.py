"""Aggregates of the jobs and downloads tables for `/metrics`, computed by SQLite in one pass per query.

Read at scrape time from the shared store, so every API worker answers the same numbers and
they survive restarts: the counts of finished jobs only grow (rows are never deleted), which is
what makes them Prometheus counters, and so do the phase histograms built from them.

A phase's seconds come from the row itself: `queue` is `started_at - created_at` (every job
that started), the others from `timings_ms`, the runner's stopwatch of a succeeded job.
"""
from __future__ import annotations

from typing import Iterable

from services.store.db import Database
# The runner's Stopwatch marks (services/jobs/runner.py) that are exposed as phases.
RUNNER_PHASES = ("models", "comfy_ready", "execute", "deliver")


def job_counts(db: Database) -> list[tuple[str, str, int]]:
    """(state, version_id or "", rows) for every state and version present."""
    rows = db.read("SELECT state, COALESCE(version_id, '') AS version, COUNT(*) AS n FROM jobs GROUP BY state, version")
    return [(r["state"], r["version"], r["n"]) for r in rows]


def _phase_values() -> str:
    parts = ["SELECT 'queue' AS phase, version_id, started_at - created_at AS s FROM jobs WHERE started_at IS NOT NULL"]
    for phase in RUNNER_PHASES:
        # json_extract: a constant path, not user input; rows without the mark yield NULL and are skipped.
        parts.append(f"SELECT '{phase}', version_id, json_extract(timings_ms, '$.{phase}') / 1000.0 FROM jobs"
                     " WHERE timings_ms IS NOT NULL")
    return " UNION ALL ".join(parts)


def phase_histograms(db: Database, buckets: Iterable[float]) -> list[tuple[str, str, list[int], int, float]]:
    """(phase, version_id or "", cumulative counts per bucket bound, count, sum of seconds)."""
    bounds = tuple(buckets)
    le = ", ".join("SUM(s <= ?)" for _ in bounds)
    rows = db.read(f"SELECT phase, COALESCE(version_id, '') AS version, COUNT(*) AS n, TOTAL(s) AS total, {le}"
                   f" FROM ({_phase_values()}) WHERE s IS NOT NULL GROUP BY phase, version", bounds)
    return [(r[0], r[1], [int(v) for v in tuple(r)[4:]], r[2], r[3]) for r in rows]


def download_totals(db: Database) -> list[tuple[str, int, int, int]]:
    """(state, rows, bytes done, bytes expected where known) for every download state present."""
    rows = db.read("SELECT state, COUNT(*), TOTAL(bytes_done), TOTAL(bytes_total) FROM downloads GROUP BY state")
    return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows]
