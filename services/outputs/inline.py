"""`output_mode=base64`: each file inlined in the result as base64.

Only for results that fit: a RunPod answer has a size cap, and the whole result is held in
memory to be sent. BASE64_MAX_BYTES bounds a job's inline total (services/jobs/delivery.py
checks it before anything is encoded).
"""
from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any


class InlineDestination:
    name = "base64"
    doc = "Inlines each file in the result as `base64`, up to `BASE64_MAX_BYTES` for the job (else `result_too_large`)."
    payload_fields: tuple[str, ...] = ()
    secret_fields: tuple[str, ...] = ()
    result_fields = ("base64",)
    settings = ("BASE64_MAX_BYTES",)

    def __init__(self, settings):
        self.settings = settings

    def configured(self, settings) -> bool:
        return True

    def target(self, payload: dict, settings) -> None:
        return None

    async def deliver(self, target, job_id: str, name: str, path: Path, size: int, sha256: str,
                      content_type: str, metadata: dict[str, str]) -> dict[str, Any]:
        data = await asyncio.to_thread(path.read_bytes)
        return {"base64": base64.b64encode(data).decode("ascii")}


def encoded_size(size: int) -> int:
    """Characters of the base64 text of `size` bytes."""
    return 4 * ((size + 2) // 3)
