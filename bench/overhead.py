"""What the job runner adds to a ComfyUI job, measured against a direct call in the same run.

    python bench/overhead.py [-n 200] [--size 512]

Starts the stand-in (or the real ComfyUI named by COMFYUI_DIR, with COMFYUI_PYTHON), then
runs the same model-free workflow (EmptyImage -> SaveImage, one PNG) alternately:
- direct: the least a correct client does: one websocket with its client id, POST /prompt,
  wait for `executing {node: null}`, GET /history/{id}, GET /view of the file;
- ours: JobRunner.run() with base64 output (validation, per-job prefix, submit, wait,
  collect, /view, sha256, base64, result assembly).
Each run uses a new colour so ComfyUI's cache never serves it. Prints min/median/p95 of
both and, last, `overhead_ms_median=<x> ratio=<ours/direct>`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.comfy.client import ComfyClient  # noqa: E402
from services.config import REPO_ROOT, Settings  # noqa: E402
from services.comfy.provider import FixedComfy  # noqa: E402
from services.jobs.runner import JobRunner  # noqa: E402
from services.versions.spec import SpecStore  # noqa: E402
from tests.comfy_backends import KIND, start_comfy  # noqa: E402


def workflow(color: int, size: int) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}}}


class Direct:
    """The minimal correct client: a baseline, not production code."""

    def __init__(self, url: str):
        self.url = url
        self.client_id = uuid.uuid4().hex
        self.done: dict[str, asyncio.Future] = {}

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(f"{self.url}/ws?clientId={self.client_id}")
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            msg = json.loads(frame.data)
            data = msg.get("data") or {}
            if msg.get("type") == "executing" and data.get("node") is None:
                future = self.done.get(data.get("prompt_id"))
                if future and not future.done():
                    future.set_result(None)

    async def run(self, prompt: dict) -> bytes:
        async with self.session.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": self.client_id}) as r:
            prompt_id = (await r.json())["prompt_id"]
        future = self.done.setdefault(prompt_id, asyncio.get_running_loop().create_future())
        await future
        async with self.session.get(f"{self.url}/history/{prompt_id}") as r:
            entry = (await r.json())[prompt_id]
        image = entry["outputs"]["2"]["images"][0]
        async with self.session.get(f"{self.url}/view", params=image) as r:
            return await r.read()

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.session.close()


def summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (f"{name:7s} n={len(samples)} min={ordered[0]:.2f} ms median={statistics.median(ordered):.2f} ms "
            f"p95={p95:.2f} ms")


async def measure(url: str, n: int, size: int) -> tuple[list[float], list[float]]:
    direct = Direct(url)
    await direct.start()
    settings = Settings.from_env({"DEFAULT_VERSION_ID": "demo", "LOG_SILENT": "1"})
    client = ComfyClient(url)
    runner = JobRunner(settings, SpecStore(REPO_ROOT / "versions"), FixedComfy(client))
    direct_ms, ours_ms = [], []
    try:
        for i in range(n + 10):  # the first 10 of each warm up connections and caches
            color = (i * 7919) % 0xFFFFFF
            started = time.perf_counter()
            await direct.run(workflow(color, size))
            elapsed_direct = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            await runner.run({"workflow": workflow(color ^ 0x800000, size)})
            elapsed_ours = (time.perf_counter() - started) * 1000
            if i >= 10:
                direct_ms.append(elapsed_direct)
                ours_ms.append(elapsed_ours)
    finally:
        await direct.close()
        await runner.close()
        await client.close()
    return direct_ms, ours_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        comfy = start_comfy(Path(tmp))
        try:
            direct_ms, ours_ms = asyncio.run(measure(comfy.url, args.n, args.size))
        finally:
            comfy.stop()
    print(f"machine: {platform.node()} {platform.machine()} python {platform.python_version()}; comfy: {KIND}")
    print(summary("direct", direct_ms))
    print(summary("ours", ours_ms))
    overhead = statistics.median(ours_ms) - statistics.median(direct_ms)
    print(f"overhead_ms_median={overhead:.2f} ratio={statistics.median(ours_ms) / statistics.median(direct_ms):.3f}")


if __name__ == "__main__":
    main()
