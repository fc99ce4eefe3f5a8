"""Serverless cold start and first job, against baselines measured in the same run.

    python bench/serverless.py [-n 3]

Every figure is the median of `-n` fresh processes, timed from spawn until runpod's test mode
prints "Local testing complete" (the job is done; the process's own teardown is not counted):
- sdk:       a bare handler (`lambda job: {}`) started with runpod's `--test_input`: the SDK's
             import and start-up, which every RunPod worker pays;
- dry:       our handler with DRY_RUN=1 (validates the payload, never starts ComfyUI);
- comfy:     ComfyUI alone (the stand-in behind a fake COMFY_HOME, or the real one named by
             COMFYUI_DIR / COMFYUI_PYTHON): spawn, first answer, one direct job;
- first:     our handler's first real job (ComfyUI warm-started in the background at spawn).
handler_extra_ms = dry - sdk. first_job_overhead_ms = first - max(comfy, sdk): ComfyUI starts
while the SDK imports, so the first result can arrive no sooner than the slower of the two.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.overhead import Direct, workflow  # noqa: E402
from services.config import REPO_ROOT  # noqa: E402
from tests.comfy_backends import KIND, REAL_DIR, real_python  # noqa: E402
from tests.standin_process import free_port, write_fake_comfy_home  # noqa: E402

BARE = "import runpod; runpod.serverless.start({'handler': lambda job: {}})"
DONE = b"Local testing complete"


def until_done(argv: list[str], env: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for line in proc.stdout:
        if DONE in line:
            elapsed = (time.perf_counter() - started) * 1000
            proc.wait(60)
            return elapsed
    raise RuntimeError(f"{argv[:3]} ended without a result (status {proc.wait()})")


def comfy_alone(home: Path, python: str, folder: Path) -> float:
    port = free_port()
    argv = [python, str(home / "main.py"), "--listen", "127.0.0.1", "--port", str(port),
            "--output-directory", str(folder / "out"), "--input-directory", str(folder / "in"),
            "--temp-directory", str(folder), "--disable-auto-launch"] + (["--cpu"] if REAL_DIR else [])
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/prompt", timeout=1)
                break
            except OSError:
                time.sleep(0.01)

        async def one_job() -> None:
            direct = Direct(f"http://127.0.0.1:{port}")
            await direct.start()
            await direct.run(workflow(123, 512))
            await direct.close()
        asyncio.run(one_job())
        return (time.perf_counter() - started) * 1000
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3)
    args = parser.parse_args()
    job = json.dumps({"input": {"version_id": "demo", "workflow": workflow(77, 512)}})
    runpod_env = {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true", "LOG_SILENT": "1"}
    samples: dict[str, list[float]] = {"sdk": [], "dry": [], "comfy": [], "first": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        home = Path(REAL_DIR) if REAL_DIR else folder / "ComfyUI"
        if not REAL_DIR:
            write_fake_comfy_home(home)
        python = real_python() if REAL_DIR else sys.executable
        for i in range(args.n):
            env = {**os.environ, **runpod_env, "DATA_ROOT": str(folder / f"data{i}"), "PYTHONPATH": str(REPO_ROOT)}
            samples["sdk"].append(until_done([sys.executable, "-c", BARE, "--test_input", job], env))
            samples["dry"].append(until_done([sys.executable, "-m", "services.serverless", "--test_input", job],
                                             {**env, "DRY_RUN": "1"}))
            samples["comfy"].append(comfy_alone(home, python, folder / f"alone{i}"))
            comfy_env = {**env, "COMFY_HOME": str(home), "COMFY_PYTHON": python, "COMFY_PORT": str(free_port()),
                         "COMFY_EXTRA_ARGS": "--cpu" if REAL_DIR else ""}
            samples["first"].append(until_done([sys.executable, "-m", "services.serverless", "--test_input", job],
                                               comfy_env))
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; comfy: {KIND}; n={args.n}")
    for name, text in (("sdk", "bare runpod handler (SDK import + start)"), ("dry", "our handler, DRY_RUN job"),
                       ("comfy", "ComfyUI start + one direct job"), ("first", "our handler, first real job")):
        print(f"{text:42s} median {med[name]:8.1f} ms  ({', '.join(f'{v:.0f}' for v in samples[name])})")
    extra = med["dry"] - med["sdk"]
    overhead = med["first"] - max(med["comfy"], med["sdk"])
    print(f"handler start-up = {med['dry'] / med['sdk']:.3f} x the bare SDK's; first result = "
          f"{med['first'] / max(med['comfy'], med['sdk']):.3f} x the slower of SDK and ComfyUI")
    print(f"handler_extra_ms={extra:.0f} first_job_overhead_ms={overhead:.0f}")


if __name__ == "__main__":
    main()
