"""The Pod API under load, against a hello-world baseline served the same way in the same run.

    python bench/api.py [--seconds 5] [--waiting 200]

Starts Pod mode for real (supervisord, gunicorn + uvicorn workers, the stand-in as `comfyui`),
then with wrk (installed from Debian's package when missing and run as root; else it stops
with one line, never measuring with a slower load generator instead):
1. baseline: a bare Falcon ASGI `/healthz` returning `{}` under the same gunicorn settings;
2. `/healthz` at 64 connections: requests/s, p50, p99;
3. `/healthz` p99 while `--waiting` synchronous `/run` requests wait behind a slow prompt;
4. a trivial `/run` at 16 connections;
5. RSS of every appliance program except ComfyUI (psutil).
Last line: `healthz_rps=<x> p99_ms=<y> busy_p99_ms=<w> rss_mb=<z>`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import workflows  # noqa: E402
from tests.pod_process import start_pod  # noqa: E402
from tests.standin_process import free_port  # noqa: E402

HELLO = '''
import falcon.asgi
class Hello:
    async def on_get(self, req, resp):
        resp.data = b"{}"
        resp.content_type = "application/json"
app = falcon.asgi.App()
app.add_route("/healthz", Hello())
'''

WRK_SCRIPT = '''
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
'''


def wrk(url: str, connections: int, seconds: float, script: Path | None = None) -> dict:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{round(seconds)}s", "--latency", url]
    if script:
        args[1:1] = ["-s", str(script)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return {"rps": rps, "p50_ms": ms("50%"), "p99_ms": ms("99%")}


def ensure_wrk() -> None:
    """wrk, or stop: a Python load generator peaks at about a tenth of wrk's rate here, so its
    figures would measure the client, not the API. Installed like scripts/install_test_engine.sh
    installs its tools: Debian's package, only as root with apt-get."""
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit("bench/api.py needs wrk: install it (`apt-get install wrk`) and run again")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_SUSPEND": "1"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"bench/api.py needs wrk and `{' '.join(exc.cmd)}` failed ({exc.returncode})") from None
    if shutil.which("wrk") is None:
        raise SystemExit("bench/api.py needs wrk: apt-get installed no `wrk` command")


def load(url: str, connections: int, seconds: float, body: bytes | None = None, folder: Path | None = None) -> dict:
    script = None
    if body is not None:
        script = folder / "post.lua"
        script.write_text(WRK_SCRIPT.format(body=body.decode()))
    return wrk(url, connections, seconds, script)


def baseline(folder: Path, seconds: float) -> dict:
    (folder / "hello_app.py").write_text(HELLO)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "2",
                             "-k", "uvicorn_worker.UvicornWorker", "--no-control-socket", "--log-level", "warning",
                             "hello_app:app"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "baseline server did not start"
                time.sleep(0.1)
        return load(url, 64, seconds)
    finally:
        proc.terminate()
        proc.wait()


def program_rss(pod) -> dict[str, float]:
    """RSS (MB) of every program and its children, by program name; ComfyUI is excluded."""
    out = {}
    for line in pod.ctl("status").stdout.splitlines():
        name, state, *rest = line.split()
        match = re.search(r"pid (\d+)", line)
        if name == "comfyui" or state != "RUNNING" or not match:
            continue
        proc = psutil.Process(int(match[1]))
        out[name] = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--waiting", type=int, default=200)
    args = parser.parse_args()
    ensure_wrk()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = baseline(folder, args.seconds)
        pod = start_pod(folder / "pod", env={"LOG_SILENT": "1"})
        try:
            healthz = load(pod.url + "/healthz", 64, args.seconds)
            run_body = json.dumps({"workflow": workflows.image(width=8, height=8)}).encode()
            run = load(pod.url + "/run", 16, args.seconds, run_body, folder)

            # A slow prompt first, then `waiting` synchronous /run requests queued behind it.
            def post(body: dict) -> None:
                req = urllib.request.Request(pod.url + "/run", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
                try:
                    urllib.request.urlopen(req, timeout=300).read()
                except OSError:
                    pass
            slow = threading.Thread(target=post, args=({"workflow": workflows.sleep_then_save(args.seconds + 8)},))
            slow.start()
            time.sleep(0.5)
            waiters = [threading.Thread(target=post, args=({"workflow": workflows.image(color=i, width=8, height=8)},))
                       for i in range(args.waiting)]
            for t in waiters:
                t.start()
            time.sleep(2)
            running = pod.request("GET", "/jobs?state=running&limit=1")[1]["counts"].get("running", 0)
            busy = load(pod.url + "/healthz", 64, args.seconds)
            rss = program_rss(pod)
            slow.join()
            for t in waiters:
                t.join()
        finally:
            pod.stop()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; load: "
          "wrk on the same machine")
    print(f"baseline hello /healthz (64 conns): {base['rps']:.0f} req/s p50 {base['p50_ms']:.2f} ms "
          f"p99 {base['p99_ms']:.2f} ms")
    print(f"ours /healthz (64 conns):           {healthz['rps']:.0f} req/s p50 {healthz['p50_ms']:.2f} ms "
          f"p99 {healthz['p99_ms']:.2f} ms  ratio {healthz['rps'] / base['rps']:.2f} of baseline")
    print(f"ours /healthz with {running} jobs running/waiting: p50 {busy['p50_ms']:.2f} ms p99 {busy['p99_ms']:.2f} ms "
          f"({busy['rps']:.0f} req/s)")
    print(f"ours trivial /run (16 conns):       {run['rps']:.0f} req/s p50 {run['p50_ms']:.2f} ms p99 {run['p99_ms']:.2f} ms")
    print("RSS (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(rss.items())) + f"; total {sum(rss.values()):.0f}")
    print(f"healthz_rps={healthz['rps']:.0f} p99_ms={healthz['p99_ms']:.2f} busy_p99_ms={busy['p99_ms']:.2f} "
          f"rss_mb={sum(rss.values()):.0f}")


if __name__ == "__main__":
    main()
