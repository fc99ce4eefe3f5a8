"""What can go wrong on the client's side, as one exception with a code a script can branch on.

Codes: the worker's own catalogued codes (`decryption_failed`, `encryption_required`,
`unknown_version:<id>`, ...; see README's Error reference) when the worker answered, and the
client's: `invalid_key`, `unauthorized` (RunPod API key or Pod token refused), `not_found`
(no such endpoint or URL), `timeout`, `unreachable`, `runpod_failed` / `cancelled` /
`timed_out` (RunPod's own job states), `bad_reply` (an answer that is not what a worker sends).
"""
from __future__ import annotations

from typing import Any


class ClientError(Exception):
    def __init__(self, code: str, detail: str = "", extra: dict[str, Any] | None = None):
        self.code = code
        self.detail = detail
        self.extra = extra or {}
        super().__init__(f"{code}: {detail}" if detail else code)

    @property
    def prefix(self) -> str:
        return self.code.split(":", 1)[0]

    # Hints for the codes a first setup meets; the worker's detail says the rest.
    HINTS = {
        "decryption_failed": "is SERVER_PUBLIC_KEY_B64 the public key of this worker's WORKER_PRIVATE_KEY_B64?",
        "encryption_unavailable": "the worker has no WORKER_PRIVATE_KEY_B64",
        "encryption_required": "this worker takes encrypted payloads only",
        "unauthorized": "check RP_API_KEY (RunPod) or API_TOKEN (Pod)",
    }

    def hint(self) -> str:
        return self.HINTS.get(self.prefix, "")
