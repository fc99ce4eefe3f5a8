"""The interface of an output destination: where a job's files go (`output_mode`).

One module per destination in services/outputs/ (base64.py, gcs.py, s3.py), listed in
services/outputs/registry.py. Everything that names destinations derives from that list: the
payload parser (services/jobs/request.py), OUTPUT_MODE's choices, the CLI's `--output`, the
OpenAPI schema and README's destination table. A destination class is constructed once per
runner as `Cls(settings)`; the class attributes below are read without constructing it, and
the module is imported by services/config.py: import the store's own library on first use.

A file is handed over spooled to local disk (`path`, with `size` and `sha256` already computed)
so that no destination holds a whole output in memory. `metadata` carries provenance strings
(services/jobs/provenance.py) to attach to the object where the store keeps metadata.

Per-job choices (bucket, prefix, credentials) come from the job's payload through `target()`,
which validates them and raises a catalogued 4xx AppError naming the field. Payload fields in
`secret_fields` hold credentials: the request parser refuses them in a plaintext payload
(`credentials_need_encryption`) unless ALLOW_PLAINTEXT_CREDENTIALS=1, and the target object
that holds them must not show them in its repr (it may end in a log line or traceback).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

from services.errors import AppError


class Destination(Protocol):
    name: ClassVar[str]                         # the output_mode value
    doc: ClassVar[str]                          # one line for README's destination table
    payload_fields: ClassVar[tuple[str, ...]]   # per-job payload fields it reads (all strings)
    secret_fields: ClassVar[tuple[str, ...]]    # those among them that hold credentials
    result_fields: ClassVar[tuple[str, ...]]    # the fields deliver() may add to an output entry
    settings: ClassVar[tuple[str, ...]]         # env names of the settings it reads (README table)

    def target(self, payload: dict, settings) -> object:
        """The validated per-job target (bucket, prefix, credentials), from payload and settings."""

    def configured(self, settings) -> bool:
        """True when a job naming nothing still has somewhere to go (a default bucket is set)."""

    async def deliver(self, target, job_id: str, name: str, path: Path, size: int, sha256: str,
                      content_type: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Store the file; return the fields (from result_fields) that tell the caller where it is."""


def optional_str(payload: dict, field: str) -> str | None:
    """A payload field that must be a string when present ("" counts as absent)."""
    value = payload.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise AppError("invalid_payload", f"{field} must be a string", suffix=field)
    return value


def check_allowed(bucket: str, allowed: tuple[str, ...], code: str, setting: str) -> None:
    """Refuse a bucket outside the operator's allowlist (empty: any bucket the credentials reach)."""
    if allowed and bucket not in allowed:
        raise AppError(code, f"this worker uploads only to the buckets in {setting}", suffix=bucket)
