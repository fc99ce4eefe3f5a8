"""The states job and download rows go through, in one place (supervisor's `states.py` habit):
the store writes them, the API filters by them and documents them (OpenAPI enums), modelsync
reads them.

Jobs end `succeeded` and downloads `done`: both words are stored on users' volumes and read by
their clients, so each table keeps its own word rather than one renamed for symmetry.
"""
from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DownloadState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Rows a worker may still act on; the SQL of services/store/leases.py spells the same two words.
ACTIVE = (JobState.QUEUED.value, JobState.RUNNING.value)
JOB_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
DOWNLOAD_TERMINAL = frozenset({DownloadState.DONE, DownloadState.FAILED, DownloadState.CANCELLED})
