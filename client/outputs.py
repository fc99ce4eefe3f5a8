"""A result's outputs on the client's disk: base64 outputs decoded into a folder, bucket outputs
listed with their URLs. Names come from the worker, so only a plain file name is used (no
folder, no `..`): a reply cannot write outside the folder it was given."""
from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from client.errors import ClientError

URL_FIELDS = ("signed_url", "public_url", "gcs_url", "s3_url")


def save(result: dict[str, Any], folder: Path) -> list[str]:
    """Write the base64 outputs under `folder`; one line per output: its path or its URL."""
    lines = []
    for index, output in enumerate(result.get("outputs") or []):
        if not isinstance(output, dict):
            continue
        if "base64" in output:
            path = folder / _safe_name(output.get("filename"), index)
            try:
                data = base64.b64decode(output["base64"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                raise ClientError("bad_reply", f"output {index} is not valid base64") from None
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            lines.append(f"{path} ({len(data)} bytes)")
        else:
            url = next((output[f] for f in URL_FIELDS if output.get(f)), None)
            if url:
                lines.append(str(url))
            elif output.get("kept_path"):  # output_mode auto without a bucket: too big to inline
                lines.append(f"kept on the worker: {output['kept_path']} (sha256 {output.get('sha256')})")
    return lines


def _safe_name(name: Any, index: int) -> str:
    plain = Path(name).name if isinstance(name, str) else ""
    if plain in ("", ".", "..") or plain != name:
        return f"output_{index}"
    return plain


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The result without its base64 payloads, to print."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (f"<{len(v)} base64 chars>" if k == "base64" and isinstance(v, str) else strip(v))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(result)
