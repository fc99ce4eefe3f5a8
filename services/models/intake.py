"""Validating a `/download` request and queueing it for the `modelsync` program.

Everything a caller sends is checked here, before a row exists: the URL (http, https or gs; an
http(s) URL under the fetch policy as far as it can be judged without a lookup: no userinfo, no
forbidden address literal), the model type (a ComfyUI folder; `unet` and `clip` become
`diffusion_models` and `text_encoders`), the file name (an allowlist: no `/`, `..`, NUL or
hidden names), the optional sha256 and size, and `replace`: a different file already at the
target is never replaced unless the request says so (409 `model_exists`). The API calls
`queue_download`; modelsync checks rows again with `validate_download` before it touches the
disk, and makes the final replace decision with the file fully verified.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from services.errors import AppError
from services.models.cache import Target, check_filename, check_type, download_root, index_path, model_exists
from services.models.index import HashIndex
from services.models.sources import check_url
from services.net.policy import FetchPolicy
from services.store.downloads import Download, DownloadStore

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class DownloadRequest:
    url: str
    type: str  # canonical
    filename: str
    sha256: str | None  # lower-case hex
    size: int | None


def validate_download(url: object, type: object, filename: object, sha256: object = None,
                      size: object = None, policy: FetchPolicy | None = None) -> DownloadRequest:
    """The normalized request, or AppError: unsupported_scheme, url_forbidden, invalid_model_type,
    invalid_filename, invalid_payload:url|sha256|size."""
    url = check_url(url, policy)
    folder = check_type(type)
    filename = check_filename(filename)
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.fullmatch(sha256)):
        raise AppError("invalid_payload", "sha256 must be 64 hexadecimal characters", suffix="sha256")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise AppError("invalid_payload", "size must be a whole number of bytes", suffix="size")
    return DownloadRequest(url, folder, filename, sha256.lower() if sha256 else None, size)


def queue_download(store: DownloadStore, settings, *, url: object, type: object, filename: object,
                   sha256: object = None, size: object = None, replace: object = False) -> Download:
    """Validate and queue; the same target already queued or running is joined, not repeated."""
    request = validate_download(url, type, filename, sha256, size, FetchPolicy.from_settings(settings))
    if not isinstance(replace, bool):
        raise AppError("invalid_payload", "replace must be true or false", suffix="replace")
    target = Target.of(download_root(settings), request.type, request.filename)
    if not replace and differs(target, request, HashIndex(index_path(settings))):
        raise model_exists(target)
    return store.enqueue(url=request.url, type=request.type, filename=request.filename,
                         sha256=request.sha256, size=request.size, replace=replace)


def differs(target: Target, request: DownloadRequest, index: HashIndex) -> bool:
    """Whether a file at the target is known, without reading it, to be another one than asked
    for. An unhashed file is left to modelsync, which hashes it before it decides."""
    try:
        st = os.stat(target.path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if request.size is not None and st.st_size != request.size:
        return True
    known = index.lookup(target.path, st) if request.sha256 else None
    return known is not None and known != request.sha256
