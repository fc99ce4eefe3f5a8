"""The measuring half of bench/gpu.py (`run` starts it once the kit is unpacked, with the kit's
packages on PYTHONPATH): three ComfyUIs of the same tree, one driven directly, one owned by the
serverless handler, one under the Pod's supervisord, the same txt2img through each, round by
round in rotating order.
"""
from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

from services.comfy.launcher import ComfyLauncher
from services.config import REPO_ROOT, Settings
from services.gpu import nvidia_smi
from services.gpu import state as gpu_state

SIDES = ("direct", "serverless", "pod")
PROMPT_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "comfy" / "txt2img_random_sd15_prompt.json"
CKPT_NAME = "random_sd15.safetensors"
TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt"}


class Stop(SystemExit):
    def __init__(self, message: str):
        super().__init__(f"gpu.py: {message}")


def say(message: str) -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the job ------------------------------------------------------------------------------
def make_prompt(template: dict, seed: int, size: int, steps: int) -> dict:
    prompt = copy.deepcopy(template)
    try:
        latent = next(n for n in prompt.values() if n["class_type"] == "EmptyLatentImage")
        sampler = next(n for n in prompt.values() if n["class_type"] == "KSampler")
        loader = next(n for n in prompt.values() if n["class_type"] == "CheckpointLoaderSimple")
    except StopIteration:
        raise Stop(f"{PROMPT_FIXTURE} is no longer a CheckpointLoaderSimple -> KSampler txt2img") from None
    latent["inputs"].update(width=size, height=size)
    sampler["inputs"].update(seed=seed, steps=steps)
    loader["inputs"]["ckpt_name"] = CKPT_NAME
    return prompt


def png_image_bytes(data: bytes) -> bytes:
    """The PNG without its text chunks. ComfyUI writes the prompt into tEXt, and the appliance
    points each job's SaveImage at its own jobs/<job_id>/ folder, so that chunk differs by design;
    everything else (header, palette, IDAT image data, end) must be byte-identical."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise Stop("an output is not a PNG")
    out, pos = [data[:8]], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if kind not in TEXT_CHUNKS:
            out.append(data[pos:end])
        pos = end
    return b"".join(out)


def pixel_difference(a: bytes, b: bytes) -> str:
    import io

    from PIL import Image, ImageChops

    ia, ib = Image.open(io.BytesIO(a)).convert("RGB"), Image.open(io.BytesIO(b)).convert("RGB")
    if ia.size != ib.size:
        return f"sizes differ {ia.size} vs {ib.size}"
    diff = ImageChops.difference(ia, ib)
    changed = sum(1 for px in diff.getdata() if px != (0, 0, 0))
    largest = max(high for _low, high in diff.getextrema())
    return f"{changed} of {ia.size[0] * ia.size[1]} pixels differ, largest channel difference {largest}"


# ---- clients ------------------------------------------------------------------------------
class DirectClient:
    """The least a correct client does (as bench/overhead.py): its websocket, POST /prompt,
    wait for `executing {node: null}`, GET /history, GET /view of the saved image."""

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout: float):
        self.session, self.url, self.timeout = session, url, timeout
        self.client_id = uuid.uuid4().hex
        self.done: dict[str, asyncio.Future] = {}

    async def start(self) -> None:
        self.ws = await self.session.ws_connect(f"{self.url}/ws?clientId={self.client_id}", max_msg_size=0)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            msg = json.loads(frame.data)
            data = msg.get("data") or {}
            kind = msg.get("type")
            if kind in ("executing", "execution_error", "execution_interrupted"):
                if kind == "executing" and data.get("node") is not None:
                    continue
                future = self.done.setdefault(data.get("prompt_id"), asyncio.get_running_loop().create_future())
                if not future.done():
                    future.set_result(None if kind == "executing" else msg)

    async def run(self, prompt: dict) -> tuple[bytes, dict]:
        t0 = time.perf_counter()
        async with self.session.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": self.client_id}) as r:
            body = await r.json()
            if r.status != 200:
                raise Stop(f"direct ComfyUI refused the prompt: {json.dumps(body)[:500]}")
        prompt_id = body["prompt_id"]
        t1 = time.perf_counter()
        future = self.done.setdefault(prompt_id, asyncio.get_running_loop().create_future())
        try:
            failure = await asyncio.wait_for(future, self.timeout)
        except asyncio.TimeoutError:
            raise Stop(f"direct ComfyUI job did not end within {self.timeout:.0f} s") from None
        if failure:
            raise Stop(f"direct ComfyUI job failed: {json.dumps(failure)[:800]}")
        t2 = time.perf_counter()
        async with self.session.get(f"{self.url}/history/{prompt_id}") as r:
            entry = (await r.json())[prompt_id]
        images = [img for out in entry["outputs"].values() for img in out.get("images", [])
                  if img.get("type") == "output"]
        if not images:
            raise Stop(f"direct ComfyUI job saved no image: {json.dumps(entry)[:500]}")
        async with self.session.get(f"{self.url}/view", params=images[0]) as r:
            data = await r.read()
        # the same stages as the appliance's timings_ms, for telling ComfyUI's time from ours
        return data, {"submit": (t1 - t0) * 1000, "execute": (t2 - t1) * 1000,
                      "deliver": (time.perf_counter() - t2) * 1000}

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()


def _first_output(result: dict, side: str) -> tuple[bytes, dict]:
    outputs = result.get("outputs") or []
    if not outputs or "base64" not in outputs[0]:
        raise Stop(f"{side} result has no base64 output: {json.dumps(result)[:500]}")
    return base64.b64decode(outputs[0]["base64"]), result.get("timings_ms") or {}


async def run_serverless(session: aiohttp.ClientSession, url: str, prompt: dict,
                         timeout: aiohttp.ClientTimeout) -> tuple[bytes, dict]:
    payload = {"input": {"version_id": "demo", "workflow": prompt, "output_mode": "base64"}}
    async with session.post(f"{url}/runsync", json=payload, timeout=timeout) as r:
        body = await r.json()
    if body.get("status") != "COMPLETED":
        raise Stop(f"serverless job failed: {json.dumps(body)[:800]}")
    return _first_output(body["output"], "serverless")


async def run_pod(session: aiohttp.ClientSession, url: str, prompt: dict,
                  timeout: aiohttp.ClientTimeout) -> tuple[bytes, dict]:
    payload = {"version_id": "demo", "workflow": prompt, "output_mode": "base64"}
    async with session.post(f"{url}/run", json=payload, timeout=timeout) as r:
        body = await r.json()
        if r.status != 200:
            raise Stop(f"Pod job failed (HTTP {r.status}): {json.dumps(body)[:800]}")
    return _first_output(body, "Pod")


# ---- the three services -------------------------------------------------------------------
@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    log: Path
    comfy_url: str
    api_url: str = ""
    pids: set = field(default_factory=set)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def remember_children(self) -> None:
        try:
            root = psutil.Process(self.proc.pid)
            self.pids |= {p.pid for p in root.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass


def _spawn(name: str, argv: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def appliance_env(cfg: dict, data_root: Path, comfy_port: int) -> dict:
    return {**os.environ, "DATA_ROOT": str(data_root), "COMFY_HOME": cfg["comfy_home"], "COMFY_PYTHON": cfg["python"],
            "COMFY_PORT": str(comfy_port), "MODELS_DIR": cfg["models_dir"],
            "COMFY_EXTRA_ARGS": " ".join(cfg["comfy_args"]),
            "COMFY_CPU": "0",  # the device is chosen here, through COMFY_EXTRA_ARGS, the same for all three
            "DEFAULT_VERSION_ID": "demo", "OUTPUT_MODE": "base64", "APPLIANCE_PROFILE": "local"}


def start_direct(cfg: dict, work: Path) -> Service:
    port = free_port()
    env = appliance_env(cfg, work / "direct", port)
    settings = Settings.from_env(env)
    argv = ComfyLauncher.from_settings(settings).prepare()  # the argv the appliance itself would use
    log = work / "logs" / "direct.log"
    proc = _spawn("direct", argv, {**env, "PYTHONUNBUFFERED": "1"}, Path(cfg["comfy_home"]), log)
    return Service("direct", proc, work / "logs" / "direct.log", f"http://127.0.0.1:{port}")


def start_serverless(cfg: dict, work: Path) -> Service:
    port, api_port = free_port(), free_port()
    env = {**appliance_env(cfg, work / "serverless", port), "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
           "RUNPOD_SKIP_GPU_CHECK": "true", "UVICORN_LOG_LEVEL": "warning"}
    argv = [cfg["python"], "-m", "services.serverless", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
            "--rp_api_port", str(api_port)]
    proc = _spawn("serverless", argv, env, REPO_ROOT, work / "logs" / "serverless.log")
    return Service("serverless", proc, work / "logs" / "serverless.log", f"http://127.0.0.1:{port}",
                   f"http://127.0.0.1:{api_port}")


def start_pod(cfg: dict, work: Path) -> Service:
    port, api_port = free_port(), free_port()
    root = work / "pod"
    shutil.rmtree(root / "etc", ignore_errors=True)
    shutil.copytree(REPO_ROOT / "etc", root / "etc")  # its .run/ socket then lives beside this copy
    env = {**appliance_env(cfg, root / "data", port), "API_PORT": str(api_port), "LAUNCH_MODE": "api",
           "GPU_POLL_INTERVAL": "1"}
    argv = [cfg["python"], "-m", "services.pod", "--config", str(root / "etc" / "supervisord.conf")]
    proc = _spawn("pod", argv, env, REPO_ROOT, work / "logs" / "pod.log")
    return Service("pod", proc, work / "logs" / "pod.log", f"http://127.0.0.1:{port}", f"http://127.0.0.1:{api_port}")


async def wait_ready(session: aiohttp.ClientSession, service: Service, timeout: float) -> float:
    started = time.monotonic()
    urls = [f"{service.comfy_url}/system_stats"]
    if service.name == "serverless":
        urls.append(f"{service.api_url}/")
    if service.name == "pod":
        urls.append(f"{service.api_url}/healthz")
    pending = list(urls)
    while pending:
        if service.proc.poll() is not None:
            raise Stop(f"{service.name} exited with {service.proc.returncode} before it was ready:\n{service.tail()}")
        if time.monotonic() - started > timeout:
            raise Stop(f"{service.name} not ready within {timeout:.0f} s (waiting for {pending[0]}):\n{service.tail()}")
        try:
            async with session.get(pending[0], timeout=aiohttp.ClientTimeout(total=5)) as r:
                if r.status == 200:
                    pending.pop(0)
                    continue
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.25)
    return time.monotonic() - started


def stop_all(services: list[Service]) -> None:
    for service in services:
        service.remember_children()
    for service in services:
        if service.proc.poll() is None:
            service.proc.send_signal(signal.SIGTERM)  # supervisord, uvicorn and ComfyUI all stop their own
    deadline = time.monotonic() + 60
    for service in services:
        try:
            service.proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait()
    time.sleep(1)
    for service in services:  # children that outlived their parent (they run in sessions of their own)
        for pid in sorted(service.pids):
            try:
                child = psutil.Process(pid)
                child.terminate()
                child.wait(10)
            except psutil.NoSuchProcess:
                pass
            except psutil.TimeoutExpired:
                child.kill()


# ---- measuring ----------------------------------------------------------------------------
def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"n={len(samples)} min={ordered[0]:.1f} median={statistics.median(ordered):.1f} p95={p95:.1f} ms"


async def measure(cfg: dict, services: dict[str, Service]) -> dict:
    template = json.loads(PROMPT_FIXTURE.read_text())
    results: dict = {"rounds": [], "devices": {}}
    timeout = aiohttp.ClientTimeout(total=cfg["job_timeout"])
    short = aiohttp.ClientTimeout(total=30)
    # no session-wide timeout: the direct client's websocket lives for the whole run
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        ready = await asyncio.gather(*(wait_ready(session, s, cfg["start_timeout"]) for s in services.values()))
        say("ready: " + ", ".join(f"{name} {sec:.1f} s" for name, sec in zip(services, ready, strict=True))
            + f" (started together, {time.monotonic() - started:.1f} s)")
        for service in services.values():
            service.remember_children()
            async with session.get(f"{service.comfy_url}/system_stats", timeout=short) as r:
                stats = await r.json()
            results["devices"][service.name] = stats["devices"][0] if stats.get("devices") else {}
        kinds = {(d.get("type"), d.get("name")) for d in results["devices"].values()}
        if len(kinds) != 1:
            raise Stop(f"the three ComfyUIs run on different devices: {results['devices']}")
        kind, name = kinds.pop()
        if not cfg["cpu"] and kind != "cuda":
            raise Stop(f"ComfyUI runs on {kind} ({name}), not on the GPU: nothing GPU-like would be measured")
        if cfg["cpu"] and kind != "cpu":
            raise Stop(f"--cpu was asked for but ComfyUI runs on {kind} ({name})")
        say(f"ComfyUI device (all three): {name}")
        direct = DirectClient(session, services["direct"].comfy_url, cfg["job_timeout"])
        await direct.start()
        runners = {"direct": direct.run,
                   "serverless": lambda p: run_serverless(session, services["serverless"].api_url, p, timeout),
                   "pod": lambda p: run_pod(session, services["pod"].api_url, p, timeout)}
        total = cfg["warmup"] + cfg["rounds"]
        try:
            for r in range(total):
                warm = r < cfg["warmup"]
                seed = cfg["seed"] + r
                order = SIDES[r % 3:] + SIDES[:r % 3]
                prompt = make_prompt(template, seed, cfg["size"], cfg["steps"])
                row = {"round": r - cfg["warmup"], "warmup": warm, "seed": seed, "order": list(order), "ms": {},
                       "timings_ms": {}, "png": {}}
                images = {}
                for side in order:
                    t0 = time.perf_counter()
                    images[side], timings = await runners[side](prompt)
                    row["ms"][side] = (time.perf_counter() - t0) * 1000
                    if timings:
                        row["timings_ms"][side] = timings
                stripped = {side: png_image_bytes(data) for side, data in images.items()}
                row["png"] = {side: {"bytes": len(images[side]), "sha256": hashlib.sha256(images[side]).hexdigest(),
                                     "image_sha256": hashlib.sha256(stripped[side]).hexdigest()} for side in SIDES}
                row["identical"] = len({row["png"][s]["image_sha256"] for s in SIDES}) == 1
                if not row["identical"]:
                    row["difference"] = {s: pixel_difference(images["direct"], images[s]) for s in SIDES[1:]}
                if r == 0 and cfg.get("save"):
                    Path(cfg["save"], "sample.png").write_bytes(images["direct"])
                results["rounds"].append(row)
                say(f"{'warm-up' if warm else 'round'} {row['round'] if not warm else r + 1:>2} seed={seed} "
                    + " ".join(f"{s}={row['ms'][s]:.0f}ms" for s in order)
                    + f" identical={'yes' if row['identical'] else 'NO ' + json.dumps(row.get('difference'))}")
        finally:
            await direct.close()
        async with session.get(f"{services['pod'].api_url}/healthz", timeout=short) as r:
            results["pod_healthz_gpu"] = (await r.json()).get("gpu")
    return results


def gpuwatch_reading(cfg: dict, work: Path) -> dict:
    """What the appliance's gpuwatch code makes of the real nvidia-smi, plus the raw CSV."""
    command = os.environ.get("NVIDIA_SMI", "nvidia-smi")
    snapshot = gpu_state.probe(command, 10.0, [work])
    raw = {}
    for key, query in (("query", nvidia_smi.QUERY_GPU), ("apps", nvidia_smi.QUERY_APPS)):
        try:
            raw[key] = nvidia_smi.run([command, *query[1:]], 10.0)
        except nvidia_smi.ProbeFailed as exc:
            raw[key] = f"# {exc.state}: {exc.reason}\n"
    if cfg.get("save"):
        Path(cfg["save"], "nvidia-smi-query.csv").write_text(raw["query"])
        Path(cfg["save"], "nvidia-smi-apps.csv").write_text(raw["apps"])
    return {"snapshot": snapshot, "raw": raw}


def write_logs(folder: Path, services: dict[str, Service]) -> None:
    with open(folder / "logs.txt", "w") as f:
        for service in services.values():
            f.write(f"==== {service.name} ({service.log})\n{service.tail(200)}\n")


def report(cfg: dict, results: dict, gpu: dict, services: dict[str, Service]) -> int:
    measured = [row for row in results["rounds"] if not row["warmup"]]
    ms = {side: [row["ms"][side] for row in measured] for side in SIDES}
    added = {side: [row["ms"][side] - row["ms"]["direct"] for row in measured] for side in SIDES[1:]}
    ratio = {side: statistics.median(row["ms"][side] / row["ms"]["direct"] for row in measured) for side in SIDES[1:]}
    med = {side: statistics.median(v) for side, v in ms.items()}
    identical = all(row["identical"] for row in results["rounds"])
    say("")
    say(f"job: txt2img {cfg['size']}x{cfg['size']}, {cfg['steps']} steps, random SD1.5-shaped checkpoint; "
        f"{len(measured)} rounds after {cfg['warmup']} warm-up rounds, order rotated every round, new seed every round")
    for side in SIDES:
        extra = ""
        if side != "direct":
            extra = (f"  per job vs direct in the same round: added median={statistics.median(added[side]):.1f} ms,"
                     f" ratio median={ratio[side]:.4f}")
        say(f"{side:10s} {summary(ms[side])}{extra}")
        stages = sorted({k for row in measured for k in row["timings_ms"].get(side, {})})
        if stages:
            medians = {k: statistics.median(row["timings_ms"][side].get(k, 0.0) for row in measured) for k in stages}
            say(f"{'':10s} its own timings_ms, medians: " + ", ".join(f"{k} {v:.1f}" for k, v in medians.items()))
    same = sum(row["identical"] for row in results["rounds"])
    say(f"images: {same}/{len(results['rounds'])} rounds byte-identical across direct, serverless and Pod "
        "(PNG image data; the tEXt prompt chunk differs by design: it names each job's own folder)")
    snapshot = gpu["snapshot"]
    say(f"gpuwatch (services/gpu over {os.environ.get('NVIDIA_SMI', 'nvidia-smi')}): state={snapshot['state']}"
        + (f" reason={snapshot['reason']}" if snapshot.get("reason") else ""))
    for g in snapshot.get("gpus", []):
        say(f"  GPU {g['index']}: {g['name']} driver {g['driver_version']} bus {g['pci_bus_id']}; memory "
            f"{g['memory_used_mib']}/{g['memory_total_mib']} MiB; util {g['utilization_gpu']}%; "
            f"{g['temperature_c']} C; "
            f"power {g['power_draw_w']}/{g['power_limit_w']} W; SM {g['clock_sm_mhz']} MHz; {g['pstate']}; "
            f"ECC uncorrected {g['ecc_uncorrected']}; clocks_event_reasons {g['clocks_event_reasons']}; "
            f"problems: {', '.join(g['problems']) or 'none'}")
    if snapshot.get("gpus"):
        pids = {p for s in services.values() for p in s.pids | {s.proc.pid}}
        apps = snapshot.get("apps", [])
        ours = [a for a in apps if a["pid"] in pids]
        say(f"  compute apps: {len(apps)} listed, {len(ours)} of them this run's ComfyUIs"
            + "".join(f"; pid {a['pid']} {a['used_memory_mib']} MiB" for a in apps))
        device = next(iter(results["devices"].values()))
        torch_name = device.get("name", "")
        matches = all(g["name"] in torch_name for g in snapshot["gpus"][:1])
        say(f"  ComfyUI/torch sees '{torch_name}', vram_total {device.get('vram_total', 0) / 2**20:.0f} MiB: "
            f"name {'matches' if matches else 'DOES NOT match'} nvidia-smi")
    pod_gpu = results.get("pod_healthz_gpu") or {}
    say(f"Pod /healthz gpu (gpuwatch under supervisord): state={pod_gpu.get('state')}"
        + (f" reason={pod_gpu.get('reason')}" if pod_gpu.get("reason") else "")
        + "".join(f"; GPU {g.get('index')} {g.get('name')}" for g in pod_gpu.get("gpus", [])))
    worst = max(SIDES[1:], key=lambda s: statistics.median(added[s]))
    gpu_name = (snapshot["gpus"][0]["name"] if snapshot.get("gpus") else "none") if not cfg["cpu"] else "cpu-selfcheck"
    if cfg.get("save"):
        out = {"config": {k: v for k, v in cfg.items() if k != "save"}, "results": results,
               "gpuwatch": gpu["snapshot"], "nvidia_smi_raw": gpu["raw"],
               "medians_ms": med, "added_ms_median": {s: statistics.median(v) for s, v in added.items()},
               "ratio_median": ratio,
               "identical": identical}
        Path(cfg["save"], "gpu_bench.json").write_text(json.dumps(out, indent=1))
        write_logs(Path(cfg["save"]), services)
    say(" ".join(f"{s}_added_ms_median={statistics.median(added[s]):.1f} {s}_ratio={ratio[s]:.4f}"
                 for s in SIDES[1:]) + f" direct_ms_median={med['direct']:.1f}")
    say(f"gpu_added_ms_median={statistics.median(added[worst]):.1f} ratio={ratio[worst]:.4f} "
        f"identical={'true' if identical else 'false'} gpu={gpu_name}")
    return 0 if identical else 1


def main() -> int:
    cfg = json.loads(sys.argv[1])
    work = Path(cfg["work"])
    for sub in ("direct", "serverless", "pod", "logs"):
        shutil.rmtree(work / sub, ignore_errors=True)
    say(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
        f"torch {cfg['torch']['version']}" + (f" (CUDA {cfg['torch']['cuda']})" if cfg["torch"].get("cuda") else ""))
    say(f"ComfyUI args (all three): {' '.join(cfg['comfy_args']) or '(none)'}")
    services: dict[str, Service] = {}
    try:
        for start in (start_direct, start_serverless, start_pod):
            service = start(cfg, work)
            services[service.name] = service
        results = asyncio.run(measure(cfg, services))
        for service in services.values():
            service.remember_children()
        gpu = gpuwatch_reading(cfg, work)
        log = services["direct"].log.read_text(errors="replace")
        evidence = [m for m in ("model_type EPS", "Requested to load SD1ClipModel", "Requested to load BaseModel",
                                "Requested to load AutoencoderKL") if m in log]
        say(f"checkpoint: {CKPT_NAME} as loaded by CheckpointLoaderSimple (direct ComfyUI's log): "
            + (f"SD1.5 ({'; '.join(evidence)})" if len(evidence) == 4 else f"NOT confirmed, found only {evidence}"))
        return report(cfg, results, gpu, services)
    except Stop as exc:
        for service in services.values():
            print(f"---- {service.name} log tail ----\n{service.tail(25)}", file=sys.stderr)
        if cfg.get("save"):
            write_logs(Path(cfg["save"]), services)
        print(exc.code, file=sys.stderr)
        return 2
    finally:
        stop_all(list(services.values()))


if __name__ == "__main__":
    sys.exit(main())
