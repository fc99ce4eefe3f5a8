"""Running jobs through the real JobRunner against a ComfyUI someone else runs (the fixtures')."""
from __future__ import annotations

from services.comfy.client import ComfyClient
from services.comfy.provider import FixedComfy
from services.jobs.runner import JobRunner
from services.versions.spec import SpecStore


async def run_jobs(url: str, payloads: list[dict], settings) -> list[dict]:
    """One after another (cache flags depend on what ComfyUI ran just before); raises the first failure."""
    client = ComfyClient(url)
    runner = JobRunner(settings, SpecStore(settings.versions_dir), FixedComfy(client))
    try:
        return [await runner.run(p) for p in payloads]
    finally:
        await runner.close()
        await client.close()
