"""Delivering a finished prompt's files to the caller.

Each output file is read back through ComfyUI's `/view` (the same route whether ComfyUI runs
beside us or elsewhere), hashed, and handed to the delivery of the job's `output_mode`.
`base64` inlines the bytes; `gcs` (services/outputs/gcs.py) uploads them and returns URLs.
"""
from __future__ import annotations

import base64
import hashlib
import mimetypes
from typing import Any, Protocol

from services import logs
from services.comfy.history import OutputFile, PromptOutcome
from services.jobs.file_inputs import JOBS_FOLDER

log = logs.get("jobs.delivery")


class Delivery(Protocol):
    async def deliver(self, job_id: str, name: str, data: bytes, content_type: str,
                      request) -> dict[str, Any]:
        """Return the fields that tell the caller where (or what) the bytes are."""


class Base64Delivery:
    async def deliver(self, job_id: str, name: str, data: bytes, content_type: str,
                      request) -> dict[str, Any]:
        return {"base64": base64.b64encode(data).decode("ascii")}


def content_type_of(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def is_own_output(output: OutputFile, job_id: str) -> bool:
    """A file the job's own save nodes wrote (services/jobs/workflow.py gives them `jobs/<job_id>/`).
    Whatever else a node reports (another job's file, an input) is never returned."""
    own = f"{JOBS_FOLDER}/{job_id}"
    return output.type == "output" and (output.subfolder == own or output.subfolder.startswith(own + "/"))


async def deliver_outcome(comfy, outcome: PromptOutcome, delivery: Delivery, job_id: str,
                          request) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for output in outcome.files:
        if not is_own_output(output, job_id):
            log.warning("foreign_output_skipped", job_id=job_id, node_id=output.node_id, type=output.type)
            continue
        data = await comfy.view(**output.view_params)
        content_type = content_type_of(output.filename)
        entry = _describe(output, data, content_type)
        entry.update(await delivery.deliver(job_id, output.filename, data, content_type, request))
        entries.append(entry)
    for text in outcome.texts:
        entries.append({"node_id": text.node_id, "type": "text", "text": text.text})
    return entries


def _describe(output: OutputFile, data: bytes, content_type: str) -> dict[str, Any]:
    return {"node_id": output.node_id, "filename": output.filename, "type": output.kind,
            "content_type": content_type, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}
