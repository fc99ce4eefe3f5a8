"""Jobs per second through the Pod against the same prompts put straight on ComfyUI's queue.

    python bench/throughput.py [-n 200] [--rounds 3] [--size 256] [--probes 400] [--sleep-ms 0]
                               [--backend-jobs 48] [--backend-sleep-ms 250]

Starts Pod mode for real (supervisord, gunicorn + uvicorn, the stand-in as `comfyui`) and
measures, in the same process, with the order of what is compared rotated every round so that
neither side profits from a warm cache (every job has its own colour: ComfyUI never serves one
from its cache):
a. `n` model-free jobs as `POST /run {"async": true}`, from submitting the first until the store
   records the last finished, against the same `n` prompts `POST /prompt`ed to the same
   ComfyUI (the Pod's own, on its port), from the first submit until the websocket announces the
   last one done. pod_vs_direct = the Pod's jobs/s / ComfyUI's (median of the rounds). The
   Pod's phases are printed from the store (claim wait, pre-submit, execute, deliver,
   bookkeeping) to show where the time goes.
b. jobs/s of a Pod with two ComfyUI backends (COMFY_GPUS=2: two stand-ins, on COMFY_PORT and
   COMFY_PORT+1) against one with one (COMFY_GPUS=1), both running all the time, measured one
   after the other in rotated order: `--backend-jobs` async jobs each that keep their ComfyUI
   busy `--backend-sleep-ms` (StandinSleep), so that the GPU's time dominates and two backends
   can at best double the rate. two_backends = two's jobs/s / one's (median of the rounds).
c. `/healthz` p99 as a monitor sees it (one keep-alive connection, `--probes` requests in a row)
   while `n` async jobs wait behind a slow prompt, as a ratio to the idle Pod's p99.
Last line: `pod_vs_direct=<a> two_backends=<b> busy_p99_ratio=<c>`.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import workflows  # noqa: E402
from tests.pod_process import Pod, start_pod  # noqa: E402

SUBMITTERS = 8  # concurrent clients submitting; both sides get the same
WARMUP_JOBS = 10


class Colours:
    """A new colour per job, across sides and rounds: ComfyUI's cache never answers one."""

    def __init__(self) -> None:
        self.next = 1

    def take(self, n: int) -> list[int]:
        taken = [(self.next + i) * 7919 % 0xFFFFFF for i in range(n)]
        self.next += n
        return taken


def prompts(colours: list[int], size: int, sleep_ms: float = 0) -> list[dict]:
    """EmptyImage -> SaveImage; with `sleep_ms`, a StandinSleep of that long in between (a job
    that keeps ComfyUI busy for a while, as a real one does)."""
    if not sleep_ms:
        return [workflows.image(width=size, height=size, color=c, prefix="tp") for c in colours]
    out = []
    for c in colours:
        workflow = workflows.sleep_then_save(sleep_ms / 1000, steps=1)
        workflow["1"]["inputs"].update(width=size, height=size, color=c)
        out.append(workflow)
    return out


async def fan_out(items: list, send) -> None:
    """Send every item from SUBMITTERS concurrent clients, in order."""
    queue = list(reversed(items))

    async def client() -> None:
        while queue:
            await send(queue.pop())
    await asyncio.gather(*(client() for _ in range(SUBMITTERS)))


# ---- direct: straight onto ComfyUI's queue ---------------------------------------------------
async def run_direct(comfy_url: str, batch: list[dict]) -> float:
    """Seconds from the first POST /prompt until ComfyUI announced the last of them done."""
    client_id = uuid.uuid4().hex
    done: dict[str, float] = {}
    submitted: set[str] = set()
    all_done = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{comfy_url}/ws?clientId={client_id}")

        async def read() -> None:
            # Events are kept whether or not the POST has answered yet: a fast prompt may finish first.
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                msg = json.loads(frame.data)
                data = msg.get("data") or {}
                if msg.get("type") == "executing" and data.get("node") is None and data.get("prompt_id"):
                    done[data["prompt_id"]] = time.perf_counter()
                    if len(submitted) == len(batch) and submitted <= done.keys():
                        all_done.set()
        reader = asyncio.create_task(read())

        async def send(prompt: dict) -> None:
            async with session.post(f"{comfy_url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                r.raise_for_status()
                submitted.add((await r.json())["prompt_id"])
        try:
            started = time.perf_counter()
            await fan_out(batch, send)
            if not submitted <= done.keys():
                await asyncio.wait_for(all_done.wait(), 600)
            async with session.get(f"{comfy_url}/history?max_items={len(batch) * 4}") as r:
                history = await r.json()
            missing = submitted - history.keys()
            if missing:
                raise SystemExit(f"direct: {len(missing)} prompts have no history")
            return max(done[p] for p in submitted) - started
        finally:
            reader.cancel()
            await ws.close()


# ---- the Pod: POST /run async, finished according to its store -------------------------------
def store_query(db: Path, sql: str, job_ids: list[str]) -> list[sqlite3.Row]:
    """`sql` with `{ids}` for the job ids, read-only on the Pod's store."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql.format(ids=",".join("?" * len(job_ids))), job_ids).fetchall()
    finally:
        conn.close()


def store_rows(db: Path, job_ids: list[str]) -> list[sqlite3.Row]:
    return store_query(db, "SELECT id, state, created_at, started_at, finished_at, result, error, backend FROM jobs"
                           " WHERE id IN ({ids})", job_ids)


def unfinished(db: Path, job_ids: list[str]) -> int:
    return len(job_ids) - store_query(db, "SELECT COUNT(*) FROM jobs WHERE finished_at IS NOT NULL"
                                          " AND id IN ({ids})", job_ids)[0][0]


async def submit_async(pod_url: str, batch: list[dict]) -> tuple[float, list[str]]:
    """POST every workflow as an async job; returns the wall-clock start and the job ids."""
    job_ids: list[str] = []
    async with aiohttp.ClientSession() as session:
        async def send(workflow: dict) -> None:
            async with session.post(f"{pod_url}/run", json={"workflow": workflow, "async": True}) as r:
                if r.status != 202:
                    raise SystemExit(f"/run answered {r.status}: {await r.text()}")
                job_ids.append((await r.json())["job_id"])
        started = time.time()
        await fan_out(batch, send)
    return started, job_ids


async def wait_finished(db: Path, job_ids: list[str], timeout: float = 600) -> list[sqlite3.Row]:
    deadline = time.monotonic() + timeout
    # A cheap count, not often: when they ended comes from the store, not from this loop.
    while await asyncio.to_thread(unfinished, db, job_ids):
        if time.monotonic() > deadline:
            raise SystemExit("pod: jobs did not finish in time")
        await asyncio.sleep(0.1)
    rows = await asyncio.to_thread(store_rows, db, job_ids)
    failed = [r for r in rows if r["state"] != "succeeded"]
    if failed:
        raise SystemExit(f"pod: {len(failed)} jobs did not succeed, e.g. {failed[0]['error']}")
    return rows


async def run_pod(pod_url: str, db: Path, batch: list[dict]) -> tuple[float, list[sqlite3.Row]]:
    """Seconds from the first POST /run until the store recorded the last job finished."""
    started, job_ids = await submit_async(pod_url, batch)
    rows = await wait_finished(db, job_ids)
    return max(r["finished_at"] for r in rows) - started, rows


def phases(rows: list[sqlite3.Row]) -> dict[str, float]:
    """Median ms per job of each phase: waiting to be claimed, the runner's own laps
    (pre-submit work, execute = ComfyUI queue + run, deliver), and the rest (store writes)."""
    out: dict[str, list[float]] = {}
    for r in rows:
        laps = json.loads(r["result"]).get("timings_ms", {})
        total = (r["finished_at"] - r["started_at"]) * 1000
        for name, ms in {"claim_wait": (r["started_at"] - r["created_at"]) * 1000, **laps,
                         "bookkeeping": total - sum(laps.values())}.items():
            out.setdefault(name, []).append(ms)
    return {name: statistics.median(v) for name, v in out.items()}


# ---- (b) two ComfyUI backends against one ---------------------------------------------------
async def two_backends(pods: dict[str, Pod], n: int, rounds: int, size: int, sleep_ms: float) -> dict[str, list[float]]:
    """jobs/s of each Pod ("one", "two") per round, `n` sleeping jobs each, the order rotated."""
    colours = Colours()
    for pod in pods.values():  # warm-up, not counted: connections, object_info, both backends' first prompt
        await run_pod(pod.url, store_of(pod), prompts(colours.take(WARMUP_JOBS), size))
    rate: dict[str, list[float]] = {name: [] for name in pods}
    for i in range(rounds):
        for name in rotated(list(pods), i):
            seconds, rows = await run_pod(pods[name].url, store_of(pods[name]), prompts(colours.take(n), size, sleep_ms))
            rate[name].append(n / seconds)
            backends = sorted({r["backend"] for r in rows})
            print(f"round {i + 1} {name} backend(s) {n / seconds:7.1f} jobs/s ({seconds:.2f} s; jobs ran on "
                  f"backends {backends})", flush=True)
    return rate


# ---- (c) /healthz while jobs wait ------------------------------------------------------------
def probe(port: int, n: int) -> float:
    """p99 (ms) of `n` GET /healthz in a row on one keep-alive connection: a monitor's view,
    not a saturating load (bench/api.py measures that)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise SystemExit(f"/healthz answered {resp.status}")
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        conn.close()
    return statistics.quantiles(latencies, n=100)[98]


async def busy_probe(pod: Pod, db: Path, batch: list[dict], probes: int) -> tuple[float, int]:
    """/healthz p99 while `batch` waits behind a slow prompt; cancels the slow one after."""
    _, (slow_id,) = await submit_async(pod.url, [workflows.sleep_then_save(120, steps=240)])
    deadline = time.monotonic() + 60
    while (await asyncio.to_thread(store_rows, db, [slow_id]))[0]["state"] != "running":
        if time.monotonic() > deadline:
            raise SystemExit("the slow job never started")
        await asyncio.sleep(0.05)
    _, job_ids = await submit_async(pod.url, batch)
    await asyncio.sleep(1)  # the claim loop fills its slots
    waiting = await asyncio.to_thread(unfinished, db, job_ids)
    p99 = await asyncio.to_thread(probe, pod.api_port, probes)
    status, _ = await asyncio.to_thread(pod.request, "DELETE", f"/jobs/{slow_id}")
    if status >= 300:
        raise SystemExit(f"DELETE /jobs/{slow_id} answered {status}")
    await wait_finished(db, job_ids)
    return p99, waiting


# ---- the rounds -------------------------------------------------------------------------------
def rotated(items: list[str], i: int) -> list[str]:
    return items[i % len(items):] + items[:i % len(items)]


def store_of(pod: Pod) -> Path:
    return Path(pod.env["DATA_ROOT"]) / "state" / "appliance.db"


async def measure(pod: Pod, n: int, rounds: int, size: int, probes: int, sleep_ms: float) -> dict:
    db = store_of(pod)
    comfy_url = f"http://127.0.0.1:{pod.comfy_port}"
    colours = Colours()
    # Warm-up: connections, object_info, the first PNG encoder call; not counted.
    await run_pod(pod.url, db, prompts(colours.take(WARMUP_JOBS), size))
    await run_direct(comfy_url, prompts(colours.take(WARMUP_JOBS), size))
    rate: dict[str, list[float]] = {"pod": [], "direct": []}
    pod_phases: list[dict[str, float]] = []
    for i in range(rounds):
        for side in rotated(["pod", "direct"], i):
            batch = prompts(colours.take(n), size, sleep_ms)
            if side == "pod":
                seconds, rows = await run_pod(pod.url, db, batch)
                pod_phases.append(phases(rows))
            else:
                seconds = await run_direct(comfy_url, batch)
            rate[side].append(n / seconds)
            print(f"round {i + 1} {side:6s} {n / seconds:7.1f} jobs/s ({seconds:.2f} s)", flush=True)
    p99: dict[str, list[float]] = {"idle": [], "busy": []}
    waiting = []
    for i in range(rounds):
        for state in rotated(["idle", "busy"], i):
            if state == "idle":
                p99["idle"].append(await asyncio.to_thread(probe, pod.api_port, probes))
            else:
                busy, held = await busy_probe(pod, db, prompts(colours.take(n), size), probes)
                p99["busy"].append(busy)
                waiting.append(held)
            print(f"round {i + 1} healthz {state}: p99 {p99[state][-1]:.2f} ms", flush=True)
    return {"rate": rate, "phases": pod_phases, "p99": p99, "waiting": waiting}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="jobs per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (EmptyImage -> SaveImage)")
    parser.add_argument("--probes", type=int, default=400, help="/healthz requests per p99")
    parser.add_argument("--sleep-ms", type=float, default=0,
                        help="make each job of (a) also sleep this long in ComfyUI (default: none, model-free and "
                             "instant: the Pod's own cost per job is all that is measured)")
    parser.add_argument("--backend-jobs", type=int, default=48, help="jobs per measurement of (b)")
    parser.add_argument("--backend-sleep-ms", type=float, default=250, help="how long each job of (b) keeps its ComfyUI busy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pod = start_pod(Path(tmp) / "pod", env={"LOG_SILENT": "1"})
        try:
            result = asyncio.run(measure(pod, args.n, args.rounds, args.size, args.probes, args.sleep_ms))
        finally:
            pod.stop()
        pods: dict[str, Pod] = {}
        try:
            for name, gpus in (("one", "1"), ("two", "2")):
                pods[name] = start_pod(Path(tmp) / f"pod-{name}", env={"LOG_SILENT": "1", "COMFY_GPUS": gpus})
            backend_rate = asyncio.run(two_backends(pods, args.backend_jobs, args.rounds, args.size,
                                                    args.backend_sleep_ms))
        finally:
            for started in pods.values():
                started.stop()
    rate, p99 = result["rate"], result["p99"]
    pod_rate, direct_rate = statistics.median(rate["pod"]), statistics.median(rate["direct"])
    idle, busy = statistics.median(p99["idle"]), statistics.median(p99["busy"])
    one_rate, two_rate = statistics.median(backend_rate["one"]), statistics.median(backend_rate["two"])
    two = f"{two_rate / one_rate:.2f}"
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; "
          f"{args.n} jobs of {args.size}x{args.size} (+{args.sleep_ms:g} ms sleep), {args.rounds} rounds, order rotated, {SUBMITTERS} submitters")
    print(f"jobs/s median: pod {pod_rate:.1f} direct {direct_rate:.1f}")
    print("pod phases, median ms per job over the rounds: " + ", ".join(
        f"{name} {statistics.median(p[name] for p in result['phases'] if name in p):.1f}"
        for name in result["phases"][0]))
    print(f"/healthz p99 median: idle {idle:.2f} ms, with {min(result['waiting'])}+ jobs waiting {busy:.2f} ms")
    print(f"jobs/s median, {args.backend_jobs} jobs of {args.backend_sleep_ms:g} ms sleep: one backend {one_rate:.2f}, "
          f"two {two_rate:.2f} (ideal ratio 2)")
    print(f"pod_vs_direct={pod_rate / direct_rate:.3f} two_backends={two} busy_p99_ratio={busy / idle:.2f}")


if __name__ == "__main__":
    main()
