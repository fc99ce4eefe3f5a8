"""Throughput of `ComfyClient.view_to_file` against `curl -o` of the same `/view` URL.

    python bench/view_stream.py [-n 5] [--mb 512]

Starts the stand-in (or the real ComfyUI named by COMFYUI_DIR, with COMFYUI_PYTHON), puts one
random file of `--mb` MiB in its output folder, then fetches it `-n` times each way into a
scratch folder, alternating which goes first, after one unmeasured fetch each (page cache,
connections). curl is the baseline: a C client writing straight to disk, no hashing. Prints
min/median MB/s of both and, last, `stream_ratio=<ours/curl> ours_mb_s=<x> curl_mb_s=<y>` (medians).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.comfy.client import ComfyClient  # noqa: E402
from tests.comfy_backends import KIND, start_comfy  # noqa: E402

NAME, SUBFOLDER = "bench_stream.bin", "bench"


def place(output_dir: Path, mb: int) -> None:
    folder = output_dir / SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / NAME, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1 << 20))


def with_curl(curl: str, url: str, dest: Path) -> None:
    query = urllib.parse.urlencode({"filename": NAME, "subfolder": SUBFOLDER, "type": "output"})
    subprocess.run([curl, "-sS", "--fail", "-o", str(dest), f"{url}/view?{query}"], check=True)


async def measure(url: str, curl: str, scratch: Path, n: int, mb: int) -> dict[str, list[float]]:
    client = ComfyClient(url)
    rates: dict[str, list[float]] = {"ours": [], "curl": []}

    async def ours(dest: Path) -> None:
        await client.view_to_file(dest, filename=NAME, subfolder=SUBFOLDER)

    async def theirs(dest: Path) -> None:
        await asyncio.to_thread(with_curl, curl, url, dest)

    try:
        for i in range(n + 1):  # the first round warms up
            order = [("ours", ours), ("curl", theirs)]
            for name, fetch in order if i % 2 else order[::-1]:
                dest = scratch / name
                started = time.perf_counter()
                await fetch(dest)
                elapsed = time.perf_counter() - started
                dest.unlink()
                if i:
                    rates[name].append(mb * (1 << 20) / 1e6 / elapsed)
    finally:
        await client.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5)
    parser.add_argument("--mb", type=int, default=512)
    args = parser.parse_args()
    curl = shutil.which("curl")
    if curl is None:
        sys.exit("bench/view_stream.py needs curl on PATH as its baseline; install curl and run it again")
    with tempfile.TemporaryDirectory() as tmp:
        comfy = start_comfy(Path(tmp))
        try:
            place(comfy.output_dir, args.mb)
            scratch = Path(tmp) / "scratch"
            scratch.mkdir()
            rates = asyncio.run(measure(comfy.url, curl, scratch, args.n, args.mb))
        finally:
            comfy.stop()
    print(f"machine: {platform.node()} {platform.machine()} cpus={os.cpu_count()} python {platform.python_version()}; "
          f"comfy: {KIND}; file: {args.mb} MiB")
    for name, samples in rates.items():
        print(f"{name:5s} n={len(samples)} min={min(samples):.0f} MB/s median={statistics.median(samples):.0f} MB/s")
    ours, theirs = statistics.median(rates["ours"]), statistics.median(rates["curl"])
    print(f"stream_ratio={ours / theirs:.3f} ours_mb_s={ours:.0f} curl_mb_s={theirs:.0f}")


if __name__ == "__main__":
    main()
