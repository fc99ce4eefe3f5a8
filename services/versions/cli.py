"""`python -m services versions list|install|verify|remove`.

Results are JSON on stdout (`list` prints a table unless `--json`); a failure prints the
error's JSON on stdout, one line on stderr and exits 1. `verify` exits 1 when it finds
problems. The image build bakes a version with `versions install <id>`, the same path a Pod
or an auto-installing worker takes.
"""
from __future__ import annotations

import json

from services import logs
from services.cli import emit
from services.versions.install import install, remove
from services.versions.registry import list_versions
from services.versions.spec import SpecStore
from services.versions.verify import verify


def add_parser(subparsers) -> None:
    versions = subparsers.add_parser("versions", help="install, list, verify and remove version environments")
    sub = versions.add_subparsers(dest="versions_command", required=True)
    listing = sub.add_parser("list", help="installed and available versions with their state")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for name, text in (("install", "install a version from versions/<ID>.json (a no-op when installed)"),
                       ("verify", "check that an installed version still matches its spec and lock file"),
                       ("remove", "delete an installed version")):
        command = sub.add_parser(name, help=text)
        command.add_argument("version_id", metavar="ID")
        if name == "install":
            command.add_argument("--no-models", action="store_true",
                                 help="install the environment only; the models are fetched later")


def run(args, settings) -> int:
    logs.configure_from(settings)
    specs = SpecStore(settings.versions_dir)
    command = args.versions_command
    if command == "list":
        rows = list_versions(settings, specs)
        print(json.dumps(rows, indent=2) if args.json else _table(rows))
        return 0
    if command == "install":
        return emit(lambda: install(specs.load(args.version_id), settings, models=not args.no_models).as_dict())
    if command == "verify":
        return emit(lambda: verify(specs.load(args.version_id), settings), failed=lambda report: not report["ok"])
    return emit(lambda: remove(args.version_id, settings))


def _table(rows: list[dict]) -> str:
    lines = [f"{'ID':<24} {'STATE':<13} {'COMFYUI':<12} INSTALLED"]
    for row in rows:
        state = row["state"] + ("*" if row["installing"] else "")
        lines.append(f"{row['id']:<24} {state:<13} {(row['comfyui'] or '-')[:12]:<12} {row['installed_at'] or '-'}")
    if any(row["installing"] for row in rows):
        lines.append("* an installer is working on it now")
    return "\n".join(lines)
