"""The deployment guide's encrypted smoke test (`python client/test_encrypted_run.py`).

Seals a payload for `SERVER_PUBLIC_KEY_B64`, sends it to the endpoint the environment names
(client/environment.py), opens the sealed reply and prints one verdict line; exit status 0 only
when the worker ran it. A `DRY_RUN=1` worker answers at once without ComfyUI; a real one runs
the payload: `SMOKE_PAYLOAD` (a JSON file) or the first argument, else a model-free workflow
(an empty image saved as PNG) returned as base64 and written under `SMOKE_OUT` (./outputs).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

from client import environment, outputs
from client.encrypted import EncryptedClient
from client.errors import ClientError

DEFAULT_PAYLOAD = {
    "output_mode": "base64",
    "workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x2266AA}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "smoke"}},
    },
}


def payload(argv: Sequence[str], env: Mapping[str, str]) -> dict:
    source = argv[0] if argv else env.get("SMOKE_PAYLOAD")
    if not source:
        return DEFAULT_PAYLOAD
    try:
        value = json.loads(Path(source).read_text())
    except (OSError, ValueError) as exc:
        raise ClientError("invalid_payload", f"{source}: {exc}") from None
    if not isinstance(value, dict):
        raise ClientError("invalid_payload", f"{source} must hold a JSON object")
    return value


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    started = time.monotonic()
    try:
        target = environment.endpoint(env)
        client = EncryptedClient(target, env.get("SERVER_PUBLIC_KEY_B64") or None)
        result = client.run(payload(argv, env))
    except ClientError as exc:
        hint = exc.hint()
        print(f"encrypted smoke FAILED: {exc}" + (f" ({hint})" if hint else ""))
        return 1
    seconds = time.monotonic() - started
    if result.get("dry_run"):
        print(f"encrypted smoke OK: {target!r} opened the envelope and answered dry_run in {seconds:.1f} s")
        return 0
    saved = outputs.save(result, Path(env.get("SMOKE_OUT") or "outputs"))
    print(f"encrypted smoke OK: {target!r} ran job {result.get('job_id')} in {seconds:.1f} s; "
          f"{len(saved)} output(s): {', '.join(saved) or 'none'}")
    return 0
