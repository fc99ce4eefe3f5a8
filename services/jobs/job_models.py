"""Models a job brings itself: `models: [{url, type, name, sha256, size?}]`.

Checked when the payload is parsed, fetched by the runner before ComfyUI is asked for the job,
through the same machinery as a version's models (services/models/fetch.py: lock, resume,
size and sha256 check, atomic rename, hash index), into the cache the running ComfyUI's
extra_model_paths name first. ComfyUI lists its model folders again on every `/object_info`
and prompt validation, so a file that lands there is loadable at once, without a restart; a
second job naming the same file finds it in the index and downloads nothing. Like the
version's models, they are held by the job's lease (the runner's `usage.InUse`) so the cache
budget never evicts them while the job runs, and each use counts for its LRU order.

The rules, all refused before the job is queued where they can be:
- `sha256` is required. A Hugging Face URL pinned to a commit (`/resolve/<40 hex>/...`) names
  content only through git: the bytes of a large file come from an LFS/CDN redirect, and the
  commit says nothing we could check them against without another API call. The caller's hash
  is the one thing that makes a fetched file the file asked for, so it is asked for always.
- http(s) only, under the fetch policy (services/net: `url_forbidden:<why>`). `gs://` is
  refused: it would read with the appliance's own storage credentials on a caller's behalf.
- `type` a ComfyUI model folder (`invalid_model_type`), `name` a plain file name
  (`invalid_filename`), each type/name once, at most MAX_MODELS, and declared sizes together
  within `JOB_MODELS_MAX_BYTES` (the bytes actually fetched are held to it too).
- A different file already at `<type>/<name>` in any model root is never replaced: another job
  may be loading it, and "a model in use is never replaced underneath a job". Known without
  reading (size, hash index) it is 409 `model_exists` at submission; otherwise the runner
  hashes it and fails the job with the same code.

A failed or cancelled fetch leaves nothing behind: no partial, and a file that failed its
checksum is deleted rather than kept in `.quarantine/` (that folder is for a person to inspect
the cache's own files; anyone may send a wrong hash).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Any

from services import logs
from services.errors import AppError
from services.models import usage
from services.models.cache import Target, cache_root, index_path, model_roots
from services.models.fetch import ensure_model
from services.models.index import HashIndex
from services.models.intake import DownloadRequest, differs, validate_download
from services.models.integrity import check_file
from services.models.locks import owner_token
from services.net.policy import FetchPolicy

log = logs.get("jobs.models")

MAX_MODELS = 8
_FIELDS = frozenset({"url", "type", "name", "sha256", "size"})


@dataclass(frozen=True)
class JobModel:
    url: str
    type: str    # canonical folder
    name: str
    sha256: str  # lower-case hex
    size: int | None


def _bad(detail: str) -> AppError:
    return AppError("invalid_payload", detail, suffix="models")


def _too_large(limit: int, what: str) -> AppError:
    return AppError("job_models_too_large", f"{what}; this worker fetches at most {limit} bytes of models per job "
                    "(JOB_MODELS_MAX_BYTES)", extra={"max_bytes": limit})


def _conflict(model: JobModel) -> AppError:
    where = f"{model.type}/{model.name}"
    return AppError("model_exists", f"a different file is already at {where}; a job's model never replaces one "
                    "(a running job may be using it): give yours another name", suffix=where)


def parse_models(value: Any, settings) -> tuple[JobModel, ...]:
    """The payload's `models`, checked; AppError for the first mistake."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _bad("models must be a list of {url, type, name, sha256}")
    if value and settings.job_models_max_bytes == 0:
        raise _bad("this worker accepts no per-job models (JOB_MODELS_MAX_BYTES=0)")
    if len(value) > MAX_MODELS:
        raise _bad(f"a job may bring at most {MAX_MODELS} models")
    policy = FetchPolicy.from_settings(settings)
    models: list[JobModel] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise _bad(f"models[{index}] must be an object {{url, type, name, sha256}}")
        unknown = sorted(set(item) - _FIELDS)
        if unknown:
            raise _bad(f"models[{index}] has unknown fields: {', '.join(map(str, unknown))[:100]}")
        if item.get("sha256") is None:
            raise _bad(f"models[{index}] needs sha256: it is what makes the fetched file the one asked for")
        request = validate_download(item.get("url"), item.get("type"), item.get("name"), item["sha256"],
                                    item.get("size"), policy)
        if not request.url.lower().startswith(("http://", "https://")):
            raise AppError("unsupported_scheme", "a job's models are fetched over http:// or https:// only",
                           suffix="gs")
        if any((m.type, m.name) == (request.type, request.filename) for m in models):
            raise _bad(f"models[{index}]: {request.type}/{request.filename} is named twice")
        models.append(JobModel(request.url, request.type, request.filename, request.sha256, request.size))
    declared = sum(m.size or 0 for m in models)
    if declared > settings.job_models_max_bytes:
        raise _too_large(settings.job_models_max_bytes, f"the models declare {declared} bytes")
    _refuse_known_conflicts(models, settings)
    return tuple(models)


def _refuse_known_conflicts(models: list[JobModel], settings) -> None:
    """409 for a model whose place already holds another file, as far as a stat() and the
    hash index tell; a file never hashed is decided by the runner (`ensure_job_models`)."""
    index = HashIndex(index_path(settings))
    for model in models:
        request = DownloadRequest(model.url, model.type, model.name, model.sha256, model.size)
        for root in model_roots(settings):
            if differs(Target(root, model.type, model.name), request, index):
                raise _conflict(model)


async def fetch_job_models(models: tuple[JobModel, ...], settings, job_id: str) -> None:
    """`ensure_job_models` off the event loop; a cancelled job stops its download."""
    if not models:
        return
    stop = threading.Event()
    try:
        await asyncio.to_thread(ensure_job_models, models, settings, owner=owner_token(), stop=stop, job_id=job_id)
    except asyncio.CancelledError:
        stop.set()  # the thread ends at its next progress report and removes its partial
        raise


def ensure_job_models(models: tuple[JobModel, ...], settings, *, owner: str, stop: threading.Event,
                      job_id: str = "") -> None:
    """Every model present and verified in a model root, or AppError."""
    index = HashIndex(index_path(settings))
    budget = settings.job_models_max_bytes
    for model in models:
        if _present_elsewhere(model, settings, index):
            continue
        target = Target(cache_root(settings), model.type, model.name)

        def within_budget(done: int, total: int | None) -> bool:
            if max(done, total or 0) > budget:
                raise _too_large(budget, f"{model.type}/{model.name} is larger")
            return True

        try:
            got = ensure_model(target, model.url, size=model.size, sha256=model.sha256, settings=settings,
                               index=index, owner=owner, on_progress=within_budget, stop=stop, replace=False)
        except AppError as exc:
            _remove_rejected(target, exc)
            if exc.prefix == "model_exists":
                raise _conflict(model) from None
            exc.extra.setdefault("model", f"{model.type}/{model.name}")
            raise
        finally:
            # Ours alone (a partial is per owner); a job's failed fetch is not resumed later.
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                target.partial_path(owner).unlink()
        budget -= got.size if got.how == "downloaded" else 0
        usage.touch(settings, [got.path])  # the cache budget evicts the least recently used
        log.info("job_model_ready", job_id=job_id, model=f"{model.type}/{model.name}", how=got.how, bytes=got.size)


def _present_elsewhere(model: JobModel, settings, index: HashIndex) -> bool:
    """The file is already, verified, in a root after the cache (MODELS_DIR when it differs);
    another file there is refused, since the same name in the cache would shadow it."""
    for root in model_roots(settings)[1:]:
        found = check_file(index, Target(root, model.type, model.name).path, size=model.size, sha256=model.sha256)
        if found.ok:
            return True
        if found.status != "missing":
            raise _conflict(model)
    return False


def _remove_rejected(target: Target, exc: AppError) -> None:
    got = exc.extra.get("got") if exc.prefix == "checksum_mismatch" else None
    if got:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target.quarantine_path(got))
