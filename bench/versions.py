"""Benchmark of version environments: no-op re-install and switch overhead, on the stand-in.

    python bench/versions.py [--rounds N]

Builds a throw-away world (local git repositories, two installed versions whose main.py runs
the ComfyUI stand-in), then measures:

- no-op: `install()` of an installed version (median), and the whole
  `python -m services versions install` command for reference (interpreter start included);
- switch overhead: a job for version B while version A runs (stop A, start B, first job
  answered) minus the same job when nothing runs (start B, first job answered), i.e. what a
  switch costs beyond the new ComfyUI's own start-up (medians).

Targets: no-op under 200 ms, switch overhead under 500 ms. The last line is
`noop_ms=<x> switch_overhead_ms=<y>`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.config import REPO_ROOT  # noqa: E402
from services.jobs.runner import JobRunner  # noqa: E402
from services.versions.install import install  # noqa: E402
from services.versions.spec import SpecStore  # noqa: E402
from services.comfy.versioned import VersionedComfy  # noqa: E402
from tests.standin_process import free_port  # noqa: E402
from tests.versions_support import World, file_url, write_spec  # noqa: E402

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}}}


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def bench_noop(settings, specs: SpecStore, world: World, root: Path, rounds: int) -> tuple[float, float]:
    spec = specs.load("a")
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        install(spec, settings)
        times.append(ms_since(start))
    cli = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "services", "versions", "install", "a"], cwd=REPO_ROOT, check=True,
                       env={**world.env(root), "LOG_SILENT": "1"}, stdout=subprocess.DEVNULL)
        cli.append(ms_since(start))
    return statistics.median(times), statistics.median(cli)


async def bench_switch(settings, specs: SpecStore, rounds: int) -> tuple[float, float]:
    provider = VersionedComfy(settings)
    runner = JobRunner(settings, specs, provider)

    async def job(version_id: str) -> float:
        start = time.perf_counter()
        result = await runner.run({"version_id": version_id, "workflow": WORKFLOW})
        assert result["comfy_version"] == version_id
        return ms_since(start)

    cold, switched = [], []
    try:
        for _ in range(rounds):
            await provider.close()
            cold.append(await job("b"))       # nothing runs: B's own start-up plus the job
            await job("a")
            switched.append(await job("b"))   # A runs: stop A, start B, the job
    finally:
        await runner.close()
        await provider.close()
    return statistics.median(cold), statistics.median(switched)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-versions-") as tmp:
        root = Path(tmp)
        world = World(root / "world")
        settings = world.settings(root, COMFY_PORT=str(free_port()), LOG_SILENT="1")
        write_spec(settings.versions_dir, "a", (file_url(world.comfy), world.comfy_v1))
        write_spec(settings.versions_dir, "b", (file_url(world.comfy), world.comfy_v2))
        specs = SpecStore(settings.versions_dir)
        for version_id in ("a", "b"):
            start = time.perf_counter()
            install(specs.load(version_id), settings)
            print(f"first install of {version_id}: {ms_since(start):.0f} ms")
        noop, noop_cli = bench_noop(settings, specs, world, root, rounds=max(20, args.rounds))
        print(f"no-op install: {noop:.2f} ms in-process; whole CLI command: {noop_cli:.0f} ms")
        cold, switched = asyncio.run(bench_switch(settings, specs, args.rounds))
        overhead = switched - cold
        print(f"job on B, nothing running: {cold:.0f} ms; job on B while A runs: {switched:.0f} ms "
              f"(medians of {args.rounds}, {os.cpu_count()} CPUs)")
    print(f"noop_ms={noop:.2f} switch_overhead_ms={overhead:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
