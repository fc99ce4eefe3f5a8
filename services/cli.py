"""`python -m services run`: run one workflow and print the result JSON (the seeds' `cli` mode).

Without `--comfy-url` (or `COMFY_URL`) it starts the job's installed version of ComfyUI (or
the checkout at `COMFY_HOME` when that is set: see services/comfy/runtime.py) for the run
and stops it afterwards. The result goes to stdout; progress goes to stderr as a bar when stderr
is a terminal. On failure the error JSON is printed and the exit status is 1.
"""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from services import logs
from services.config import Settings
from services.errors import AppError
from services.outputs import registry
from services.versions.spec import SpecStore

if TYPE_CHECKING:
    from services.comfy.client import Progress


def add_run_parser(sub) -> None:
    run = sub.add_parser("run", help="run one workflow and print the result JSON")
    run.add_argument("--workflow", required=True, type=Path, help="API-format workflow JSON file")
    run.add_argument("--version", dest="version_id", help="version id (default: DEFAULT_VERSION_ID)")
    run.add_argument("--output", dest="output_mode", choices=registry.output_modes(), help="output mode")
    for field in _destination_options():
        run.add_argument("--" + field.replace("_", "-"), dest=field, help=f"the job's {field}")
    run.add_argument("--comfy-url", help="use this running ComfyUI instead of starting one")
    run.add_argument("--timeout", type=float, help="seconds before the job is interrupted")
    run.add_argument("--verbose", action="store_true", help="add timings and cache details")


def _destination_options() -> tuple[str, ...]:
    """The destinations' payload fields as options; credentials are not taken on a command line
    (other users see it in `ps`): the CLI uploads with the environment's."""
    secret = set(registry.secret_fields())
    return tuple(f for f in registry.payload_fields() if f not in secret)


def _progress_printer():
    if not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", file=sys.stderr, leave=False, bar_format="{l_bar}{bar}| {n:.0f}%")

    def update(progress: Progress) -> None:
        bar.n = progress.percent
        bar.set_description(f"node {progress.node}" if progress.node else "queued")
        bar.refresh()

    return update, bar


async def _run(args, settings: Settings) -> dict:
    # Imported here so that the other commands (`versions`, `settings`) start without aiohttp.
    from services.comfy.client import ComfyClient
    from services.comfy.launcher import json_line_sink
    from services.comfy.provider import FixedComfy
    from services.comfy.versioned import VersionedComfy
    from services.jobs.runner import JobRunner

    try:
        workflow_text = args.workflow.read_text(encoding="utf-8")
    except OSError as exc:
        raise AppError("invalid_workflow", f"cannot read {args.workflow}: {exc.strerror}", suffix="unreadable") from None
    payload = {"workflow": workflow_text, "version_id": args.version_id, "verbose": args.verbose}
    for key in ("output_mode", "timeout", *_destination_options()):
        if getattr(args, key) is not None:
            payload[key] = getattr(args, key)
    url = args.comfy_url or settings.comfy_url
    if url:
        provider = FixedComfy(ComfyClient(url))
    else:
        sink = None if settings.log_silent else json_line_sink()
        provider = VersionedComfy(settings, line_sink=sink)
    runner = JobRunner(settings, SpecStore(settings.versions_dir), provider)
    on_progress, bar = _progress_printer()
    try:
        return await runner.run(payload, on_progress=on_progress)
    finally:
        if bar is not None:
            bar.close()
        await runner.close()
        await (provider.close() if isinstance(provider, VersionedComfy) else provider.client.close())


def emit(call: Callable[[], dict], failed: Callable[[dict], bool] = lambda result: False) -> int:
    """Print the result JSON of `call` on stdout (status 0, or 1 when `failed` says so), or its
    error's JSON plus a one-line message on stderr (status 1)."""
    try:
        result = call()
    except AppError as exc:
        json.dump(exc.as_dict(), sys.stdout)
        sys.stdout.write("\n")
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 1 if failed(result) else 0


def run_command(args, settings: Settings) -> int:
    logs.configure_from(settings)
    return emit(lambda: asyncio.run(_run(args, settings)))
