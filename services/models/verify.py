"""Are the models of a version present, whole and right? With `fix`, make them so.

Every file is checked first, several at once: hashlib releases the GIL, and a cold network
volume serves parallel reads better than one. Then, with `fix`, the missing and wrong ones are
fetched one after another (each download is itself parallel). Models always live in the cache,
`COMFY_CACHE_ROOT/models/<type>/<name>`, so versions naming the same file share it.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence

from services.errors import AppError
from services.models.cache import Target, cache_root, index_path
from services.models.fetch import ensure_model
from services.models.index import HashIndex
from services.models.integrity import FileCheck, check_file
from services.versions.spec import ModelSpec


class Progress(Protocol):
    def update(self, name: str, phase: str, done: int, total: int | None) -> None: ...

    def finished(self, name: str, status: str) -> None: ...


class _Quiet:
    def update(self, name: str, phase: str, done: int, total: int | None) -> None:
        pass

    def finished(self, name: str, status: str) -> None:
        pass


@dataclass(frozen=True)
class ModelReport:
    name: str
    type: str
    path: str | None
    status: str  # verified | fixed | missing | size_mismatch | checksum_mismatch | failed | invalid
    size: int | None = None
    sha256: str | None = None
    error: str | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("verified", "fixed")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def targets_of(settings, models: Sequence[ModelSpec]) -> list[Target | AppError]:
    """Each model's place in the cache, or why it cannot have one."""
    root = cache_root(settings)
    found: list[Target | AppError] = []
    for model in models:
        try:
            found.append(Target.of(root, model.type, model.name))
        except AppError as exc:
            found.append(exc)
    return found


def verify_models(settings, models: Sequence[ModelSpec], *, fix: bool, owner: str,
                  progress: Progress | None = None, stop: threading.Event | None = None) -> list[ModelReport]:
    progress = progress or _Quiet()
    index = HashIndex(index_path(settings))
    targets = targets_of(settings, models)

    def check(pair: tuple[ModelSpec, Target | AppError]) -> ModelReport:
        model, target = pair
        if isinstance(target, AppError):
            report = ModelReport(model.name, model.type, None, "invalid", error=target.code, detail=target.detail)
        else:
            found = check_file(index, target.path, size=model.size, sha256=model.sha256,
                               on_bytes=lambda done: progress.update(model.name, "verify", done, model.size))
            report = _report(model, target, found, fix)
        if report.ok or not fix or report.status == "invalid":
            progress.finished(model.name, report.status)
        return report

    workers = max(1, min(len(models), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        reports = list(pool.map(check, zip(models, targets)))
    if fix:
        for i, (model, target) in enumerate(zip(models, targets)):
            if not reports[i].ok and isinstance(target, Target):
                reports[i] = _fix(model, target, settings, index, owner, progress, stop)
                progress.finished(model.name, reports[i].status)
    return reports


def _report(model: ModelSpec, target: Target, found: FileCheck, fix: bool) -> ModelReport:
    if found.ok:
        return ModelReport(model.name, target.type, str(target.path), "verified", found.size, found.sha256)
    if found.status == "missing":
        detail = "the file is absent"
    elif found.status == "size_mismatch":
        detail = f"the file has {found.size} bytes, {model.size} expected"
    else:
        detail = f"the file's sha256 is {found.sha256}, {model.sha256} expected"
    return ModelReport(model.name, target.type, str(target.path), found.status, found.size, found.sha256,
                       error=None if fix else f"model_missing:{model.name}", detail=detail)


def _fix(model: ModelSpec, target: Target, settings, index: HashIndex, owner: str, progress: Progress,
         stop: threading.Event | None) -> ModelReport:
    def on_progress(done: int, total: int | None) -> bool:
        progress.update(model.name, "download", done, total)
        return True

    try:
        got = ensure_model(target, model.url, size=model.size, sha256=model.sha256, settings=settings,
                           index=index, owner=owner, on_progress=on_progress, stop=stop)
    except AppError as exc:
        return ModelReport(model.name, target.type, str(target.path), "failed", error=exc.code, detail=exc.detail)
    status = "verified" if got.how == "present" else "fixed"
    return ModelReport(model.name, target.type, str(got.path), status, got.size, got.sha256)
