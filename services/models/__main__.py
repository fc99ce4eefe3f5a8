"""`python -m services.models verify --version ID [--fix] [--json]`

Checks every model of the version's spec in the cache (present, right size, right sha256) and,
with --fix, downloads the missing and wrong ones. On a terminal it draws a progress bar per
file and one overall; otherwise it prints one summary line (or, with --json, the full report
on stdout). Exit status: 0 when every model is verified, 1 when one is not, 2 when the version
or the settings cannot be used, 130 when interrupted (a partial download resumes next time).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from services import config, logs
from services.errors import AppError
from services.models.locks import owner_token
from services.models.verify import ModelReport, verify_models
from services.versions.spec import SpecStore


class TqdmProgress:
    """A byte bar per file while it is hashed or downloaded, and a bar of models done."""

    def __init__(self, count: int):
        from tqdm import tqdm

        self._tqdm = tqdm
        self._lock = threading.Lock()
        self._bars: dict[str, object] = {}
        self.overall = tqdm(total=count, unit="model", desc="models", position=0, file=sys.stderr)

    def update(self, name: str, phase: str, done: int, total: int | None) -> None:
        with self._lock:
            bar = self._bars.get(name)
            if bar is None or bar.desc != f"{phase} {name}":
                if bar is not None:
                    bar.close()
                bar = self._bars[name] = self._tqdm(total=total, unit="B", unit_scale=True, leave=False,
                                                    desc=f"{phase} {name}", position=len(self._bars) + 1,
                                                    file=sys.stderr)
            bar.update(done - bar.n)

    def finished(self, name: str, status: str) -> None:
        with self._lock:
            bar = self._bars.pop(name, None)
            if bar is not None:
                bar.close()
            self.overall.update(1)

    def close(self) -> None:
        self.overall.close()


def summary(version_id: str, reports: list[ModelReport], seconds: float) -> str:
    ok = sum(r.ok for r in reports)
    fixed = sum(r.status == "fixed" for r in reports)
    line = f"verify {version_id}: {ok}/{len(reports)} models verified ({fixed} downloaded) in {seconds:.1f} s"
    bad = [f"{r.name} {r.error or r.status}" for r in reports if not r.ok]
    return line + ("; not verified: " + ", ".join(bad) if bad else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check (and with --fix, download) the models of a version")
    verify.add_argument("--version", dest="version_id", help="version id (default: DEFAULT_VERSION_ID)")
    verify.add_argument("--fix", action="store_true", help="download missing and wrong models")
    verify.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = parser.parse_args(argv)

    settings = config.load_or_exit()
    logs.configure_from(settings)
    version_id = args.version_id or settings.default_version_id
    started = time.monotonic()
    try:
        if not version_id:
            raise AppError("missing_version_id", "give --version or set DEFAULT_VERSION_ID")
        spec = SpecStore(settings.versions_dir).load(version_id)
    except AppError as exc:
        print(json.dumps(exc.as_dict()) if args.json else f"verify: {exc.one_line()}",
              file=sys.stdout if args.json else sys.stderr)
        return 2
    progress = TqdmProgress(len(spec.models)) if sys.stderr.isatty() else None
    try:
        reports = verify_models(settings, spec.models, fix=args.fix, owner=owner_token(), progress=progress)
    except KeyboardInterrupt:
        print("verify: interrupted; a partial download resumes next time", file=sys.stderr)
        return 130
    finally:
        if progress is not None:
            progress.close()
    ok = all(r.ok for r in reports)
    if args.json:
        print(json.dumps({"version": spec.id, "ok": ok, "seconds": round(time.monotonic() - started, 3),
                          "models": [r.as_dict() for r in reports]}, indent=2))
    else:
        print(summary(spec.id, reports, time.monotonic() - started))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
