"""What a job id may be, wherever it comes from (`job_id` in /run, an `Idempotency-Key`'s job,
RunPod's own job id): it names the job's store row and its folders (`input/jobs/<id>`,
`output/jobs/<id>`), so it is a plain name: letters, digits, `_` and `-`, dots only between
them (no `..`, no leading dot or dash), at most 64 characters.
"""
from __future__ import annotations

import re
from typing import Any

from services.errors import AppError

JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")
MAX_LENGTH = 64


def is_job_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_LENGTH and JOB_ID_RE.fullmatch(value) is not None


def checked(value: Any) -> str:
    """`value` when it is a job id, else the catalogued 400."""
    if not is_job_id(value):
        raise AppError("invalid_payload", f"job_id is 1-{MAX_LENGTH} letters, digits, '_' or '-', with dots "
                                          "only between them", suffix="job_id")
    return value
