"""`Idempotency-Key` on `POST /run`: the HTTP-standard spelling of a client-chosen `job_id`.

The key names the job: a key that is itself a valid job id (services/jobs/job_id.py) is the job id, any other key maps to `ik-` + the first 48 hex digits of its sha256. So a
retry, from any API worker and after any restart, finds the job its first request made, exactly
as a repeated `job_id` does.

Unlike a bare `job_id`, a key promises the same request: each job keeps the sha256 of the
canonical body it was made from (`request_sha256`, migration 7), and a key repeated with another
body is refused with 409 `idempotency_conflict` instead of answering with someone else's job.
The body is canonical JSON (sorted keys, no spaces, UTF-8) of what the job stores, so `async`
and `job_id`, which say how to run it, not what, are left out; an encrypted envelope is hashed as
sent (epk, nonce, ciphertext), since its plaintext is never compared in clear.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from services.errors import AppError
from services.jobs.job_id import is_job_id

HEADER = "Idempotency-Key"
MAX_KEY = 255
# Visible ASCII: a key is an opaque token (often a UUID), and it ends up in logs and hashes.
_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}\Z")


def parse_key(raw: str | None) -> str | None:
    """The header's key, or None when absent. A Structured Fields string (`"..."`, the IETF
    draft's form) and a bare token (Stripe's) are both accepted."""
    if raw is None:
        return None
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not _KEY_RE.match(key):
        raise AppError("invalid_payload", f"{HEADER} is 1-{MAX_KEY} visible ASCII characters",
                       suffix="idempotency_key")
    return key


def job_id_for(key: str) -> str:
    if is_job_id(key):
        return key
    return "ik-" + hashlib.sha256(key.encode()).hexdigest()[:48]


def resolve_job_id(key: str | None, job_id: str | None) -> str | None:
    """The job id a request runs as: the key's, which a `job_id` beside it must equal."""
    if key is None:
        return job_id
    keyed = job_id_for(key)
    if job_id is not None and job_id != keyed:
        raise AppError("invalid_payload", f"job_id and the {HEADER} header name different jobs; send one",
                       suffix="idempotency_key")
    return keyed


def request_sha256(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a lone surrogate ("\ud800") is valid JSON, not UTF-8; it must get a 4xx later, not crash here.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def check_same(job, sha256: str) -> None:
    """Raise 409 when an existing job was made from another body. A job stored without a hash
    (made before migration 7) cannot be compared and is taken as the same."""
    if job is not None and job.request_sha256 is not None and job.request_sha256 != sha256:
        raise AppError("idempotency_conflict", f"{HEADER} was used before with a different request body "
                       f"(job {job.id}); use a new key for a new request", extra={"job_id": job.id})
