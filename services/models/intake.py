"""Validating a `/download` request and queueing it for the `modelsync` program.

Everything a caller sends is checked here, before a row exists: the URL scheme (http, https,
gs), the model type (a ComfyUI folder; `unet` and `clip` become `diffusion_models` and
`text_encoders`), the file name (an allowlist: no `/`, `..`, NUL or hidden names), and the
optional sha256 and size. The API calls `queue_download`; modelsync checks rows again with
`validate_download` before it touches the disk.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from services.errors import AppError
from services.models.cache import check_filename, check_type
from services.models.sources import check_url
from services.store.downloads import Download, DownloadStore

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class DownloadRequest:
    url: str
    type: str  # canonical
    filename: str
    sha256: str | None  # lower-case hex
    size: int | None


def validate_download(url: object, type: object, filename: object, sha256: object = None,
                      size: object = None) -> DownloadRequest:
    """The normalized request, or AppError: unsupported_scheme, invalid_model_type,
    invalid_filename, invalid_payload:url|sha256|size."""
    url = check_url(url)
    folder = check_type(type)
    filename = check_filename(filename)
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.match(sha256)):
        raise AppError("invalid_payload", "sha256 must be 64 hexadecimal characters", suffix="sha256")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise AppError("invalid_payload", "size must be a whole number of bytes", suffix="size")
    return DownloadRequest(url, folder, filename, sha256.lower() if sha256 else None, size)


def queue_download(store: DownloadStore, *, url: object, type: object, filename: object,
                   sha256: object = None, size: object = None) -> Download:
    """Validate and queue; the same target already queued or running is joined, not repeated."""
    request = validate_download(url, type, filename, sha256, size)
    return store.enqueue(url=request.url, type=request.type, filename=request.filename,
                         sha256=request.sha256, size=request.size)
