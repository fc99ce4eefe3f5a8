"""Delivering a finished prompt's files to the caller.

Each output file is streamed from ComfyUI's `/view` (the same route whether ComfyUI runs beside
us or elsewhere) into a spool folder, hashed on the way, so no output is held whole in memory
before a destination (services/outputs/) takes it:

- a bucket `output_mode` (`gcs`, ...): every file goes to that destination;
- `base64`: every file inline, while the job's base64 stays within BASE64_MAX_BYTES; past it
  the job fails with `result_too_large` rather than answer without some outputs (a client that
  asked for bytes reads a result with fewer as success); the files are kept (below);
- `auto`: the smallest files go inline while the job's base64 stays within INLINE_MAX_BYTES
  (under RunPod's result caps), the rest to the job's bucket destination; with none, a file that
  does not fit is kept on this machine and its entry says so (`omitted`, `kept_path`, sha256).

Kept files are moved to OUTPUT_KEEP_DIR/<job_id>/: a job never loses an output it made.
"""
from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services import logs
from services.comfy.history import OutputFile, PromptOutcome
from services.errors import AppError
from services.jobs.file_inputs import JOBS_FOLDER
from services.jobs.provenance import OutputStamp
from services.outputs import registry
from services.outputs.destination import Destination
from services.outputs.inline import encoded_size

log = logs.get("jobs.delivery")

SPOOL_FOLDER = ".spool"  # inside OUTPUT_KEEP_DIR: keeping a file is a rename on one filesystem


@dataclass(frozen=True)
class Spooled:
    output: OutputFile
    path: Path
    size: int
    sha256: str
    content_type: str

    def describe(self) -> dict[str, Any]:
        return {"node_id": self.output.node_id, "filename": self.output.filename, "type": self.output.kind,
                "content_type": self.content_type, "size": self.size, "sha256": self.sha256}


def content_type_of(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def is_own_output(output: OutputFile, job_id: str) -> bool:
    """A file the job's own save nodes wrote (services/jobs/workflow.py gives them `jobs/<job_id>/`).
    Whatever else a node reports (another job's file, an input) is never returned."""
    own = f"{JOBS_FOLDER}/{job_id}"
    return output.type == "output" and (output.subfolder == own or output.subfolder.startswith(own + "/"))


class Deliverer:
    """The destinations of one runner (constructed once: a GCS client is reused across jobs)."""

    def __init__(self, settings):
        self.settings = settings
        self.destinations: dict[str, Destination] = {name: cls(settings) for name, cls in registry.by_name().items()}
        self.keep_dir = Path(settings.output_keep_dir)

    async def deliver(self, comfy, outcome: PromptOutcome, request, job_id: str,
                      stamp: OutputStamp | None = None) -> list[dict[str, Any]]:
        """The result's `outputs`. `stamp`: the job's provenance (services/jobs/provenance.py)."""
        spool = self.keep_dir / SPOOL_FOLDER / job_id
        try:
            files = await self._spool(comfy, outcome, job_id, spool, stamp)
            texts = [{"node_id": t.node_id, "type": "text", "text": t.text,
                      **({"cached": stamp.cached(t.node_id)} if stamp else {})} for t in outcome.texts]
            entries = await self._place(files, request, job_id, stamp, sum(len(t["text"]) for t in texts))
            return entries + texts
        finally:
            await asyncio.to_thread(shutil.rmtree, spool, True)

    async def _spool(self, comfy, outcome: PromptOutcome, job_id: str, spool: Path,
                     stamp: OutputStamp | None) -> list[Spooled]:
        # A worker that died mid-delivery left its spool: this delivery of the job starts afresh.
        await asyncio.to_thread(shutil.rmtree, spool, True)
        await asyncio.to_thread(_private_dir, spool)
        files = []
        for index, output in enumerate(outcome.files):
            if not is_own_output(output, job_id):
                log.warning("foreign_output_skipped", job_id=job_id, node_id=output.node_id, type=output.type)
                continue
            folder = spool / str(index)  # two save nodes may write the same name in two subfolders
            await asyncio.to_thread(folder.mkdir, 0o700)
            path = folder / output.filename
            size, sha256 = await comfy.view_to_file(path, **output.view_params)
            if stamp is not None and stamp.png and output.filename.lower().endswith(".png"):
                size, sha256 = await asyncio.to_thread(_stamp_png, stamp, output, path)
            files.append(Spooled(output, path, size, sha256, content_type_of(output.filename)))
        return files

    async def _place(self, files: list[Spooled], request, job_id: str, stamp: OutputStamp | None,
                     text_chars: int) -> list[dict[str, Any]]:
        inline = self.destinations[registry.INLINE]
        where = self._plan(files, request, text_chars)
        if request.output_mode == registry.INLINE and None in where.values():
            kept = [await self._keep(f, job_id) for f in files]
            raise AppError("result_too_large", f"the outputs take {sum(encoded_size(f.size) for f in files)} "
                           f"base64 characters; BASE64_MAX_BYTES allows {self.settings.base64_max_bytes}. Use "
                           "output_mode auto or a bucket; the files are kept on the worker",
                           extra={"outputs": kept})
        entries = []
        for spooled in files:
            destination = where[spooled.path]
            if destination is None:
                entry = await self._keep(spooled, job_id)
            else:
                entry = spooled.describe()
                target = None if destination is inline else request.target
                metadata = stamp.metadata(spooled.output) if stamp is not None else {}
                entry.update(await destination.deliver(target, job_id, spooled.output.filename, spooled.path,
                                                       spooled.size, spooled.sha256, spooled.content_type, metadata))
            if stamp is not None:
                entry["cached"] = stamp.cached(spooled.output.node_id)
            entries.append(entry)
        return entries

    def _plan(self, files: list[Spooled], request, text_chars: int) -> dict[Path, Destination | None]:
        """Which destination each file goes to; None: kept here (it fits nowhere)."""
        if request.output_mode not in (registry.INLINE, registry.AUTO):
            return {f.path: self.destinations[request.destination] for f in files}
        inline = self.destinations[registry.INLINE]
        bucket = self.destinations[request.destination] if request.destination else None
        limit = (self.settings.base64_max_bytes if request.output_mode == registry.INLINE
                 else self.settings.inline_max_bytes) - text_chars
        plan: dict[Path, Destination | None] = {}
        for spooled in sorted(files, key=lambda f: f.size):  # smallest first: most files inline
            cost = encoded_size(spooled.size)
            if cost <= limit:
                limit -= cost
                plan[spooled.path] = inline
            else:
                plan[spooled.path] = bucket
        return plan

    async def _keep(self, spooled: Spooled, job_id: str) -> dict[str, Any]:
        folder = self.keep_dir / job_id / spooled.path.parent.name
        await asyncio.to_thread(_private_dir, folder)
        kept = folder / spooled.path.name
        await asyncio.to_thread(os.replace, spooled.path, kept)
        log.warning("output_kept", job_id=job_id, filename=spooled.output.filename, size=spooled.size, path=str(kept))
        return {**spooled.describe(), "omitted": "too_large_for_inline", "kept_path": str(kept),
                "detail": "too large to inline and no bucket is configured; kept on the worker"}


def _stamp_png(stamp: OutputStamp, output: OutputFile, path: Path) -> tuple[int, str]:
    """PROVENANCE_PNG: the PNG with its provenance text chunk, in place; its new size and sha256.
    The chunk is inserted in memory (provenance.add_png_text): PNGs only, an image's size."""
    data = stamp.apply(output, path.read_bytes())
    path.write_bytes(data)
    return len(data), hashlib.sha256(data).hexdigest()


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
