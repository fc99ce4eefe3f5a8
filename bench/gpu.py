"""GPU check, ready to run: the same txt2img directly on ComfyUI and through the appliance.

Two phases, because the GPU machine has no internet:

1. On a machine with the package registries (and git), make the kit:

       python bench/gpu.py prepare --out /tmp/gpukit --comfy-src PATH \\
           [--python-version 3.12] [--have FILE] [--omit NAME ...] [--full] [--with-torch SPEC ...]

   PATH is a git checkout or mirror of Comfy-Org/ComfyUI holding the commit versions/demo.json
   pins. The kit (bench/gpu_kit/kit.py) is ComfyUI's tree at that commit plus wheels of the
   appliance's and ComfyUI's requirements for CPython 3.12 on linux x86_64, without torch:
   the GPU machine's own torch (and torchvision) is used. `--have` names what the target
   already has (`pip list --format=freeze` there, or bare names; bench/gpu_kit/have-nvidia-h200.txt
   is this workplace's lent H200) so it is left out; the kit stops with the list of its biggest
   wheels when it exceeds `--max-mib` (default 60, what a 64 MiB transfer leaves).

2. On the GPU machine (Python with torch and a CUDA driver; nothing to download):

       python3 bench/gpu.py run --kit DIR [--rounds 12] [--warmup 3] [--size 512] [--steps 20] [--save DIR]
       python3 bench/gpu.py run --kit DIR --cpu      # the script itself, on a machine without a GPU

   It unpacks the kit under --work (default /tmp/gpu-bench), generates a randomly initialised
   checkpoint with SD1.5's exact names and shapes (bench/gpu_kit/sd15.py, fixed seed), starts three
   ComfyUIs of the same tree on the same device: one driven directly, one owned by the serverless
   handler (`python -m services.serverless --rp_serve_api`), one under the Pod's supervisord
   (`python -m services.pod`, LAUNCH_MODE=api), and sends the same txt2img
   (tests/fixtures/comfy/txt2img_random_sd15_prompt.json, one seed per round) to each: warm-up
   rounds, then measured rounds, the order rotated every round so no side always runs first or
   after the same neighbour. It checks the three PNGs of every round are byte-identical (their
   text chunks aside: ComfyUI writes the prompt there, which names each appliance job's own
   folder), reports per-job medians and the appliance's added time (paired per round), and what
   the appliance's gpuwatch code (services/gpu) reads from the real nvidia-smi.

   Missing prerequisites stop it with one line and exit status 2: no nvidia-smi or no GPU listed,
   no torch or torch without CUDA, no kit or a kit for another Python, a requirement the kit and
   the machine do not meet, ComfyUI on another device than asked. Exit status 1: images differ.

The last line: `gpu_added_ms_median=<x> ratio=<y> identical=<true|false> gpu=<name>`, where x is
the larger of the two modes' median added milliseconds per job (its job minus the direct job of
the same round) and y that mode's median ratio of the same pairs (the line before gives both modes).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.gpu_kit import kit  # noqa: E402  (standard library only)
from services.gpu import nvidia_smi  # noqa: E402  (standard library only)

TORCH_PROBE = """
import json, sys
try:
    import torch
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"})); sys.exit()
info = {"version": torch.__version__, "cuda": torch.version.cuda, "available": torch.cuda.is_available()}
if info["available"]:
    info["device"] = torch.cuda.get_device_name(0)
print(json.dumps(info))
"""


def stop(message: str) -> None:
    raise kit.KitError(f"cannot run: {message}")


def demo_commit() -> str:
    return json.loads((REPO_ROOT / "versions" / "demo.json").read_text())["comfyui"]["commit"]


def cmd_prepare(args: argparse.Namespace) -> None:
    source = args.comfy_src or (Path(os.environ["COMFYUI_DIR"]) if os.environ.get("COMFYUI_DIR") else None)
    if source is None:
        stop("prepare needs --comfy-src: a git checkout or mirror of Comfy-Org/ComfyUI")
    kit.prepare(args.out, source, args.commit or demo_commit(), REPO_ROOT, args.python_version, args.have,
                args.omit, args.full, args.with_torch, args.max_mib, [sys.executable, "-m", "pip"], args.glibc)
    print(f"kit ready in {args.out}: carry kit.json, comfyui.tar.gz and wheels.tar.xz; on the GPU machine run "
          f"`python3 bench/gpu.py run --kit <that folder>`")


def check_gpu() -> None:
    command = os.environ.get("NVIDIA_SMI", "nvidia-smi")
    if not shutil.which(command):
        stop(f"no {command} on PATH: this is not a machine with an NVIDIA driver "
             "(use --cpu to check the script itself without a GPU)")
    try:
        gpus = nvidia_smi.parse_gpus(nvidia_smi.run([command, *nvidia_smi.QUERY_GPU[1:]], 15.0))
    except nvidia_smi.ProbeFailed as exc:
        stop(f"nvidia-smi does not answer ({exc.reason})")
    except ValueError as exc:
        stop(f"nvidia-smi's output is unreadable ({exc})")
    if not gpus:
        stop("nvidia-smi lists no GPU")


def check_torch(python: str, cpu: bool, env: dict) -> dict:
    proc = subprocess.run([python, "-c", TORCH_PROBE], capture_output=True, text=True, env=env)
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        stop(f"{python} could not be asked about torch: {proc.stderr.strip()[-500:]}")
    if "error" in info:
        stop(f"no torch in {python} ({info['error']}). The kit carries no torch by default: run with a Python "
             "that has torch (and torchvision), or prepare the kit with --with-torch 'torch==X' 'torchvision==Y' "
             "(several GB of CUDA wheels)")
    if not cpu and not info["available"]:
        stop(f"torch {info['version']} in {python} cannot use the GPU (torch.cuda.is_available() is False; "
             f"built for CUDA {info['cuda']})")
    return info


def cmd_run(args: argparse.Namespace) -> int:
    manifest = kit.load_manifest(args.kit)
    if not args.cpu:
        check_gpu()
    python = sys.executable
    if manifest["torch"]["from"] == "target":
        check_torch(python, args.cpu, dict(os.environ))  # before unpacking anything
    work = args.work
    site, comfy_home = kit.install(args.kit, work, manifest)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), str(REPO_ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}
    torch_info = check_torch(python, args.cpu, env)
    problems = kit.check_requirements(python, env, manifest)
    for line in problems["warn"][:10]:
        print(f"[gpu.py] note, this machine's own packages: {line}", file=sys.stderr)
    if len(problems["warn"]) > 10:
        print(f"[gpu.py] note: {len(problems['warn']) - 10} more such notes", file=sys.stderr)
    if problems["stop"]:
        stop("the kit and this machine's packages do not meet the requirements:\n  " + "\n  ".join(problems["stop"])
             + "\nPrepare the kit again with --have <this machine's `pip list --format=freeze`>")
    ckpt = work / "models" / "checkpoints" / "random_sd15.safetensors"
    sidecar = ckpt.with_suffix(".json")
    info = json.loads(sidecar.read_text()) if sidecar.is_file() and ckpt.is_file() else None
    fresh = False
    if not info or info.get("seed") != args.weights_seed or info.get("bytes") != ckpt.stat().st_size:
        print(f"[gpu.py] generating {ckpt.name} (seed {args.weights_seed}) ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        argv = [python, "-m", "bench.gpu_kit.sd15", "--out", str(ckpt), "--seed", str(args.weights_seed)]
        proc = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            stop(f"generating the checkpoint failed: {proc.stderr.strip()[-1500:]}")
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        info["generated_in_s"] = round(time.monotonic() - started, 1)
        sidecar.write_text(json.dumps(info))
        fresh = True
    print(f"checkpoint: {ckpt} {info['bytes'] / 1e9:.2f} GB sha256={info['sha256'][:16]}… seed={info['seed']} "
          "params " + " ".join(f"{part}={count:,}" for part, count in info["parameters"].items())
          + (f", generated in {info['generated_in_s']} s" if fresh else f", reused from {work}"), flush=True)
    comfy_args = (["--cpu"] if args.cpu else []) + args.comfy_args.split()
    has_frontend = subprocess.run([python, "-c", "import comfyui_frontend_package"], env=env,
                                  capture_output=True).returncode == 0
    if not has_frontend:  # left out of the kit to fit the transfer: serve an empty UI, the API is the same
        empty = work / "empty-frontend"
        empty.mkdir(parents=True, exist_ok=True)
        (empty / "index.html").write_text("<!doctype html><title>no frontend in the gpu kit</title>\n")
        comfy_args += ["--front-end-root", str(empty)]
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
    cfg = {"work": str(work), "comfy_home": str(comfy_home), "python": python, "models_dir": str(work / "models"),
           "cpu": args.cpu, "size": args.size, "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
           "seed": args.seed, "save": str(args.save) if args.save else "", "comfy_args": comfy_args,
           "torch": torch_info, "checkpoint": info, "start_timeout": args.start_timeout,
           "job_timeout": args.job_timeout, "kit": {"created": manifest["created"],
                                                    "commit": manifest["comfyui"]["commit"]}}
    return subprocess.run([python, "-m", "bench.gpu_kit.measure", json.dumps(cfg)], env=env, cwd=REPO_ROOT).returncode


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    defaults = {"rounds": (12, 3), "warmup": (3, 1), "size": (512, 64), "steps": (20, 1)}
    for name, (gpu_value, cpu_value) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, cpu_value if args.cpu else gpu_value)
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be at least 1 and --warmup at least 0")
    if args.rounds % 3:
        print("[gpu.py] note: --rounds is not a multiple of 3, so the sides do not take each position "
              "equally often", file=sys.stderr)
    return cmd_run(args)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="make the offline kit (needs the package registries and a ComfyUI git source)")
    p.add_argument("--out", type=Path, required=True, help="kit folder (e.g. /tmp/gpukit)")
    p.add_argument("--comfy-src", type=Path, help="git checkout or mirror of Comfy-Org/ComfyUI (default: $COMFYUI_DIR)")
    p.add_argument("--commit", help="ComfyUI commit (default: the one versions/demo.json pins)")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python, major.minor (default 3.12)")
    p.add_argument("--glibc", default=kit.GLIBC, help=f"the oldest glibc the wheels may need (default {kit.GLIBC})")
    p.add_argument("--have", type=Path, help="what the target already has: `pip list --format=freeze` or bare names")
    p.add_argument("--omit", nargs="*", default=[], help="more packages to leave out")
    p.add_argument("--full", action="store_true", help="keep the optional packages (kit.OPTIONAL) too")
    p.add_argument("--with-torch", nargs="*", default=[], metavar="SPEC",
                   help="carry torch too, e.g. 'torch==2.11.0' 'torchvision==0.26.0' (several GB with CUDA)")
    p.add_argument("--max-mib", type=float, default=60.0, help="fail when the kit is larger (0: no limit)")
    r = sub.add_parser("run", help="measure on this machine from a kit")
    r.add_argument("--kit", type=Path, required=True)
    r.add_argument("--cpu", action="store_true", help="check the script on a machine without a GPU (64x64, 1 step)")
    r.add_argument("--work", type=Path, default=Path("/tmp/gpu-bench"),
                   help="where to unpack and run (default /tmp/gpu-bench)")
    r.add_argument("--rounds", type=int, help="measured rounds (default 12; --cpu 3)")
    r.add_argument("--warmup", type=int, help="warm-up rounds, not counted (default 3; --cpu 1)")
    r.add_argument("--size", type=int, help="image side in pixels (default 512; --cpu 64)")
    r.add_argument("--steps", type=int, help="sampler steps (default 20; --cpu 1)")
    r.add_argument("--seed", type=int, default=42, help="sampler seed of the first round (default 42)")
    r.add_argument("--weights-seed", type=int, default=1234, help="seed of the random checkpoint (default 1234)")
    r.add_argument("--comfy-args", default="",
                   help="more ComfyUI arguments for all three, e.g. --comfy-args=--deterministic")
    r.add_argument("--save", type=Path, help="write gpu_bench.json, the raw nvidia-smi CSV, a sample PNG and logs here")
    r.add_argument("--start-timeout", type=float, default=600.0, help="seconds for the three services to be ready")
    r.add_argument("--job-timeout", type=float, default=600.0, help="seconds one job may take")
    args = parser.parse_args()
    try:
        if args.command == "prepare":
            cmd_prepare(args)
            return
        status = run_command(args, parser)
    except kit.KitError as exc:
        print(f"gpu.py: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status)


if __name__ == "__main__":
    main()
