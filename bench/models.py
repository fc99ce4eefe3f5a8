"""The model store against the plain tools, measured in the same run on the same files.

    python bench/models.py [--download-gib 1] [--verify-gib 4] [--runs 5] [--verify-runs 3]
                           [--download-dir /dev/shm] [--verify-dir /var/tmp]

- download: a 1 GiB file from a local HTTP server (sendfile, honours Range); our downloader
  (segments, sha256 while streaming, fsync, rename) in a child process vs `curl -o`, and ours
  again in one stream. All are transfer times (curl's `time_total`, ours timed inside the child,
  without the interpreter's start-up). Median of `--runs`, rotating who goes first; ratio = our
  throughput (default settings) / curl's. Both write into `--download-dir`, by default /dev/shm: on the 2-core VM
  this was written on, buffered writes of 512 MiB to ext4 took either 0.1 s or 1.2 s from one
  run to the next, for any writer, which buried the difference between the two tools.
- peak RSS of our download process (its VmHWM).
- cold verify of 4 GiB of model files (empty hash index, page cache dropped when we may) with
  `python -m services.models verify` vs `sha256sum` on the same files, `--verify-runs` times,
  rotating who goes first (whoever read the freshly written files first paid for them);
  ratio = our median / theirs.
- warm verify: the same command again, files unchanged (the index answers).
Prints the details, then last `download_ratio=<x> verify_ratio=<y> warm_verify_ms=<z> rss_mb=<w>`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.config import REPO_ROOT, Settings  # noqa: E402
from services.models.cache import index_path  # noqa: E402
from tests.http_server import LocalServer  # noqa: E402
from tests.model_server import Blob  # noqa: E402

GiB = 1 << 30
SETTLE_SECONDS = 1.0


def make_file(path: Path, size: int) -> str:
    """Random bytes (incompressible), returning their sha256."""
    hasher = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, 16 << 20))
            hasher.update(block)
            out.write(block)
            left -= len(block)
    return hasher.hexdigest()


def settle(seconds: float = SETTLE_SECONDS) -> None:
    """Start each timed run with no dirty pages and no pending discards: on this VM's ext4
    (mounted with `discard`) the blocks of a deleted 1 GiB file were trimmed at the next
    journal commit, so whoever fsynced next paid for the previous run's file."""
    os.sync()
    time.sleep(seconds)
    os.sync()


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def child_download(url: str, sha256: str, size: int) -> None:
    """Runs in the child: one ensure_model into DATA_ROOT's cache; prints the seconds it took."""
    from services.config import Settings
    from services.models.cache import Target, cache_root, index_path
    from services.models.fetch import ensure_model
    from services.models.index import HashIndex
    from services.models.locks import owner_token

    settings = Settings.from_env()
    target = Target.of(cache_root(settings), "checkpoints", "bench.safetensors")
    started = time.perf_counter()
    ensure_model(target, url, size=size, sha256=sha256, settings=settings,
                 index=HashIndex(index_path(settings)), owner=owner_token())
    seconds = time.perf_counter() - started
    # VmHWM, not the parent's wait4 ru_maxrss: that one also counts the parent's pages the
    # forked child held before exec.
    hwm_kib = int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                       if line.startswith("VmHWM:")))
    print(json.dumps({"seconds": seconds, "rss_mb": hwm_kib / 1024}))


def run_ours(url: str, sha256: str, size: int, env: dict) -> tuple[float, float]:
    proc = subprocess.run([sys.executable, __file__, "--child-download", url, sha256, str(size)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"our download failed: {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    return report["seconds"], report["rss_mb"]


def run_curl(url: str, dest: Path) -> float:
    out = subprocess.run(["curl", "-s", "-f", "-o", str(dest), "-w", "%{time_total}", url],
                         check=True, capture_output=True, text=True).stdout
    return float(out)


def bench_download(work: Path, size: int, runs: int) -> dict:
    """curl, ours with the default settings, and ours in one stream (`DOWNLOAD_SEGMENTS=1`):
    on loopback parallel pieces cannot go faster than one connection, so the second shows what
    they cost; on a real network they are what makes a CDN's per-connection limit go away."""
    source = work / "served.bin"
    sha256 = make_file(source, size)
    # The served file is on loopback: the fetch policy needs telling (services/net).
    env = {"PATH": os.environ["PATH"], "LOG_SILENT": "1", "DATA_ROOT": str(work / "ours"),
           "FETCH_ALLOW_HOSTS": "127.0.0.1"}
    variants = {"curl": None, "ours": env, "ours_1_stream": {**env, "DOWNLOAD_SEGMENTS": "1"}}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    rss = []
    with LocalServer() as server:
        url = server.route("/model", Blob(source))
        for i in range(runs):
            order = list(variants)
            for name in order[i % len(order):] + order[:i % len(order)]:  # who goes first rotates
                settle()
                if variants[name] is None:
                    seconds[name].append(run_curl(url, work / "curl.bin"))
                    (work / "curl.bin").unlink()
                    continue
                took, peak = run_ours(url, sha256, size, variants[name])
                seconds[name].append(took)
                rss.append(peak)
                subprocess.run(["rm", "-rf", str(work / "ours")], check=True)
    source.unlink()
    median = {name: statistics.median(runs_) for name, runs_ in seconds.items()}
    return {"median": median, "runs": seconds, "rss_mb": max(rss),
            "ratio": median["curl"] / median["ours"], "ratio_1_stream": median["curl"] / median["ours_1_stream"]}


def bench_verify(work: Path, total: int, runs: int) -> dict:
    data_root = work / "verify"
    folder = data_root / "models" / "checkpoints"
    folder.mkdir(parents=True)
    versions = work / "versions"
    versions.mkdir()
    models, files = [], []
    for i in range(4):
        path = folder / f"m{i}.safetensors"
        models.append({"name": path.name, "type": "checkpoints", "url": "http://127.0.0.1:9/unused",
                       "size": total // 4, "sha256": make_file(path, total // 4)})
        files.append(str(path))
    (versions / "bench.json").write_text(json.dumps({
        "id": "bench", "comfyui": {"repo": "https://github.com/Comfy-Org/ComfyUI.git", "commit": "a" * 40},
        "models": models}))
    env = {"PATH": os.environ["PATH"], "LOG_SILENT": "1", "DATA_ROOT": str(data_root),
           "VERSIONS_DIR": str(versions)}

    def ours() -> float:
        proc = subprocess.run([sys.executable, "-m", "services.models", "verify", "--version", "bench", "--json"],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        report = json.loads(proc.stdout)
        if not report["ok"]:
            raise SystemExit(f"verify failed: {proc.stdout}")
        return report["seconds"]

    index = index_path(Settings.from_env(env))

    def sha256sum() -> float:
        started = time.perf_counter()
        subprocess.run(["sha256sum", *files], check=True, capture_output=True)
        return time.perf_counter() - started

    def ours_cold() -> float:
        index.unlink(missing_ok=True)  # an empty hash index: every file is read and hashed
        return ours()

    # Freshly written files are dirty in the page cache: whoever read them first paid for that,
    # so both start from synced files, who goes first rotates, and the medians are compared.
    settle()
    variants = {"sha256sum": sha256sum, "ours": ours_cold}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    cold = True
    for i in range(runs):
        order = list(variants)
        for name in order[i % len(order):] + order[:i % len(order)]:
            cold = drop_caches() and cold
            seconds[name].append(variants[name]())
    ours_warm = min(ours() for _ in range(5))
    median = {name: statistics.median(runs_) for name, runs_ in seconds.items()}
    return {"sha256sum_s": median["sha256sum"], "ours_cold_s": median["ours"], "runs": seconds,
            "ratio": median["ours"] / median["sha256sum"], "warm_ms": ours_warm * 1000, "page_cache_dropped": cold}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--download-gib", type=float, default=1.0)
    parser.add_argument("--verify-gib", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=5, help="downloads of each kind")
    parser.add_argument("--verify-runs", type=int, default=3, help="cold verifies of each kind")
    parser.add_argument("--download-dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                        help="where both downloads write (default: /dev/shm)")
    parser.add_argument("--verify-dir", default=None,
                        help="where the files to verify live; a disk, for a cold page cache (default: the "
                             "system's temporary folder)")
    parser.add_argument("--child-download", nargs=3, metavar=("URL", "SHA256", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_download:
        url, sha256, size = args.child_download
        child_download(url, sha256, int(size))
        return 0
    print(f"machine: {platform.node()} {os.cpu_count()} CPUs, python {platform.python_version()}")
    with tempfile.TemporaryDirectory(dir=args.download_dir) as tmp:
        down = bench_download(Path(tmp), int(args.download_gib * GiB), args.runs)
    size = args.download_gib * GiB
    print(f"download {args.download_gib:g} GiB into {args.download_dir or tempfile.gettempdir()}, "
          f"median of {args.runs}:")
    for name, took in down["median"].items():
        print(f"  {name:14} {took:.2f} s ({size / took / 1e6:.0f} MB/s)  runs {[round(x, 2) for x in down['runs'][name]]}")
    print(f"  one stream: ratio {down['ratio_1_stream']:.2f}")
    print(f"download peak RSS of our process: {down['rss_mb']:.0f} MB")
    with tempfile.TemporaryDirectory(dir=args.verify_dir) as tmp:
        ver = bench_verify(Path(tmp), int(args.verify_gib * GiB), args.verify_runs)
    print(f"verify {args.verify_gib:g} GiB cold, median of {args.verify_runs} (order rotated): sha256sum "
          f"{ver['sha256sum_s']:.2f} s, ours {ver['ours_cold_s']:.2f} s (page cache dropped: "
          f"{ver['page_cache_dropped']}); warm {ver['warm_ms']:.1f} ms")
    for name, took in ver["runs"].items():
        print(f"  {name:14} runs {[round(x, 2) for x in took]}")
    print(f"download_ratio={down['ratio']:.2f} verify_ratio={ver['ratio']:.2f} "
          f"warm_verify_ms={ver['warm_ms']:.1f} rss_mb={down['rss_mb']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
