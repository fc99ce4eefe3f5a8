"""The `modelsync` program: downloads queued by the API, and the models of the active versions.

Each turn does one unit of work: claim the oldest queued download and work it, heartbeating
its progress into the store; if none is queued, fetch the next missing model of
`ACTIVE_VERSIONS`; if nothing is missing, sleep `MODELSYNC_POLL_INTERVAL`. So a download a user
asked for waits at most for the current file, never for a whole version. After each download,
and every budget.EVICT_EVERY seconds, the cache is brought under MODEL_CACHE_MAX_BYTES
(services/models/budget.py: least recently used first, the active versions' models never).

At start, the rows of dead modelsync processes (SIGKILL, OOM, a pod restart) get their lease
ended and are resumed at once from their partial file, locks of dead processes are removed, and
so are partial files nobody wants any more.

SIGTERM or SIGINT stops the current download between chunks, keeps its partial, and exits 0.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Callable

from services import config, logs
from services.errors import AppError
from services.models import budget, locks
from services.models.cache import Target, download_root, index_path, model_roots
from services.models.downloader import Stopped
from services.models.fetch import ensure_model
from services.models.index import HashIndex
from services.models.intake import validate_download
from services.models.verify import targets_of, verify_models
from services.net.policy import FetchPolicy
from services.startup_ledger import Ledger
from services.store.db import Database
from services.store.downloads import Download, DownloadStore
from services.versions.spec import ModelSpec, SpecStore
from services.store.states import ACTIVE

log = logs.get("modelsync")

STORE_EVERY = 1.0      # seconds between progress writes to the store (the lease is 30 s)
LOG_EVERY = 10.0       # seconds between progress lines in the log
MAX_RETRY_DELAY = 3600.0
PENDING_SCAN = 1000    # queued rows looked at when deciding which partials are still wanted


class ModelSync:
    def __init__(self, settings, downloads: DownloadStore, specs: SpecStore, *, owner: str | None = None,
                 stop: threading.Event | None = None):
        self.settings = settings
        self.downloads = downloads
        self.specs = specs
        self.owner = owner or locks.owner_token()
        self.stop = stop or threading.Event()
        self.index = HashIndex(index_path(settings))
        self._failures: dict[str, tuple[int, float]] = {}  # target path -> (failures, next try)
        self._reported: set[str] = set()  # spec problems already logged once
        self._budget_at = float("-inf")  # when the budget was last enforced (monotonic)

    def run(self) -> None:
        log.info("modelsync_start", owner=self.owner, active_versions=list(self.settings.active_versions))
        self.sweep()
        while not self.stop.is_set():
            if not self.step():
                self.stop.wait(self.settings.modelsync_poll_interval)
        log.info("modelsync_stop", owner=self.owner)

    def sweep(self) -> None:
        stale = self.settings.download_lock_stale
        for dead in self.downloads.expire_dead_owners(lambda owner: locks.owner_alive(owner, 0.0, stale)):
            log.info("modelsync_resume_dead_owner", dead_owner=dead)
        wanted = {target.path for _, target in self._active_models()}
        for row in self.downloads.list(PENDING_SCAN):
            if row.state in ACTIVE:
                try:
                    wanted.add(Target.of(download_root(self.settings), row.type, row.filename).path)
                except AppError:
                    continue
        locks.sweep(model_roots(self.settings), wanted, stale)

    def step(self) -> bool:
        """One unit of work; False when there was none."""
        row = self.downloads.claim(self.owner)
        if row is not None:
            self._work(row)
            self.enforce_budget()
            return True
        for model, target in self._active_models():
            if self._due(target):
                self._keep(model, target)
                self.enforce_budget()
                return True
        if time.monotonic() - self._budget_at >= budget.EVICT_EVERY:
            self.enforce_budget()
        return False

    def enforce_budget(self) -> None:
        """Evict models past MODEL_CACHE_MAX_BYTES; the active versions' models always stay."""
        self._budget_at = time.monotonic()
        if not self.settings.model_cache_max_bytes:
            return
        active = []
        for version_id in self.settings.active_versions:
            try:
                spec = self.specs.load(version_id)
            except AppError:
                return  # reported by _active_models; without its models' names, nothing is safe to evict
            active += [t.path for t in targets_of(self.settings, spec.models) if isinstance(t, Target)]
        try:
            budget.enforce(self.settings, active, self.owner)
        except OSError as exc:  # an unreadable cache folder must not stop the downloads
            log.error("model_budget_failed", error=str(exc))

    def _work(self, row: Download) -> None:
        try:
            request = validate_download(row.url, row.type, row.filename, row.sha256, row.size,
                                        FetchPolicy.from_settings(self.settings))
            target = Target.of(download_root(self.settings), request.type, request.filename)
            got = ensure_model(target, request.url, size=request.size, sha256=request.sha256,
                               settings=self.settings, index=self.index, owner=self.owner,
                               on_progress=self._progress(target, row.id), stop=self.stop,
                               replace=bool(row.replace_existing))
        except Stopped:
            log.info("download_paused", download_id=row.id, stopping=self.stop.is_set())
            return
        except AppError as exc:
            log.error("download_failed", download_id=row.id, error=exc.code, detail=exc.detail)
            self.downloads.fail(self.owner, row.id, exc.code, exc.detail)
            return
        self.downloads.finish(self.owner, row.id, path=str(got.path), sha256=got.sha256 or "", size=got.size)
        log.info("download_done", download_id=row.id, path=str(got.path), how=got.how)

    def _keep(self, model: ModelSpec, target: Target) -> None:
        key = str(target.path)
        try:
            got = ensure_model(target, model.url, size=model.size, sha256=model.sha256, settings=self.settings,
                               index=self.index, owner=self.owner, on_progress=self._progress(target),
                               stop=self.stop)
        except Stopped:
            return
        except AppError as exc:
            failures = self._failures.get(key, (0, 0.0))[0] + 1
            delay = min(self.settings.modelsync_poll_interval * 2 ** failures, MAX_RETRY_DELAY)
            self._failures[key] = (failures, time.monotonic() + delay)
            log.error("model_sync_failed", path=key, error=exc.code, detail=exc.detail, retry_in_s=round(delay))
            return
        self._failures.pop(key, None)
        log.info("model_present", path=key, how=got.how)

    def _due(self, target: Target) -> bool:
        return self._failures.get(str(target.path), (0, 0.0))[1] <= time.monotonic()

    def _active_models(self) -> list[tuple[ModelSpec, Target]]:
        """The models of the active versions that are not verified, one entry per target."""
        chosen: dict[str, ModelSpec] = {}
        missing = []
        for version_id in self.settings.active_versions:
            try:
                spec = self.specs.load(version_id)
            except AppError as exc:
                self._report_once(f"{version_id}:{exc.code}", "active_version_unusable", version=version_id,
                                  error=exc.code, detail=exc.detail)
                continue
            reports = verify_models(self.settings, spec.models, fix=False, owner=self.owner)
            for model, target, report in zip(spec.models, targets_of(self.settings, spec.models), reports):
                if not isinstance(target, Target):
                    self._report_once(f"{version_id}:{model.name}", "model_invalid", version=version_id,
                                      error=target.code)
                    continue
                key = str(target.path)
                first = chosen.setdefault(key, model)
                if (first.sha256, first.size) != (model.sha256, model.size):
                    # Two active versions want different files at one path: keeping both would
                    # replace one with the other forever.
                    self._report_once(f"conflict:{key}", "model_conflict", path=key, version=version_id)
                elif first is model and not report.ok:
                    missing.append((model, target))
        return missing

    def _report_once(self, key: str, event: str, **fields) -> None:
        if key not in self._reported:
            self._reported.add(key)
            log.error(event, **fields)

    def _progress(self, target: Target, download_id: str | None = None) -> Callable[[int, int | None], bool]:
        last_store = last_log = 0.0

        def on_progress(done: int, total: int | None) -> bool:
            nonlocal last_store, last_log
            now = time.monotonic()
            if now - last_log >= LOG_EVERY:
                last_log = now
                log.info("model_progress", path=str(target.path), bytes_done=done, bytes_total=total)
            if download_id is None or now - last_store < STORE_EVERY:
                return True
            last_store = now
            # False when the row is no longer ours (cancelled, or taken over): stop the download.
            return self.downloads.progress(self.owner, download_id, done, total)

        return on_progress


def main() -> int:
    ledger = Ledger("modelsync")
    settings = config.load_or_exit()
    logs.configure_from(settings)
    ledger.mark("settings_loaded")
    ledger.persist(settings.run_dir)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        db = Database(settings.state_db)
    except Exception as exc:  # noqa: BLE001 - any failure here means the volume is unusable
        print(f"modelsync: cannot open the state database {settings.state_db}: {exc}", file=sys.stderr)
        return 1
    ledger.mark("store_opened")
    ModelSync(settings, DownloadStore(db), SpecStore(settings.versions_dir), stop=stop).run()
    return 0
