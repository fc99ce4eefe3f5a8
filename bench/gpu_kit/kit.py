"""The offline kit of bench/gpu.py: made where the package registries are, unpacked where they are not.

A kit is a folder of three files, small enough to travel to a machine without internet:

- `kit.json`        what is inside: the ComfyUI commit, the target Python and platform, every
                    wheel (name, version, sha256), what was left out and why;
- `comfyui.tar.gz`  the ComfyUI tree at the pinned commit (no `.git`), from a git mirror or checkout;
- `wheels.tar.xz`   the wheels of the appliance's requirements and ComfyUI's, for the target
                    platform, re-zipped uncompressed inside one xz stream (about a quarter
                    smaller than the wheels as published).

torch, torchvision and torchaudio are not in it by default: their CUDA wheels are several GB,
so the GPU machine's own torch is used (`--with-torch` downloads them instead, for a machine
that has none and a way to carry GBs). Packages the target already has in a fitting version
(`--have`: its `pip list --format=freeze`, or bare names) are left out too, and so are the
optional ones ComfyUI and the appliance start without (OPTIONAL below), unless `--full`.

Only the standard library is used here: `run` unpacks the kit before anything else is importable.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

FORMAT = 1
STUB_VERSIONS = {"torch": "2.11.0+kitstub", "torchvision": "0.26.0+kitstub", "torchaudio": "2.11.0+kitstub"}
TORCH_STACK = tuple(STUB_VERSIONS)
# Left out unless --full: ComfyUI 0.3.64 and the appliance start and run txt2img without them.
OPTIONAL = {
    "comfyui-workflow-templates": "84 MB of example workflows for the browser UI; ComfyUI logs an error and goes on",
    "comfyui-embedded-docs": "node docs for the browser UI; ComfyUI logs one line and goes on",
    "kornia": "only some comfy_extras nodes import it (they log IMPORT FAILED); not on the txt2img path",
    "kornia-rs": "kornia's native part",
    "boto3": "runpod imports it only to upload to S3 (rp_upload), never here",
    "botocore": "boto3's",
    "s3transfer": "boto3's",
    "jmespath": "boto3's",
}
GLIBC = "2.28"  # wheels built for this glibc or older: any current Linux GPU image has a newer one


def platforms(glibc: str) -> list[str]:
    """pip matches `--platform` tags exactly, so name every manylinux level up to the target's glibc."""
    major, minor = (int(x) for x in glibc.split("."))
    if major != 2 or minor < 17:
        raise KitError(f"--glibc {glibc}: give the target's glibc as 2.N with N >= 17")
    return ([f"manylinux_2_{n}_x86_64" for n in range(minor, 4, -1)]
            + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"])


class KitError(Exception):
    """A prerequisite is missing: bench/gpu.py prints the message as one line and exits with 2."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _say(message: str) -> None:
    print(f"[gpu.py] {message}", file=sys.stderr, flush=True)


# ---- prepare: ComfyUI tree ------------------------------------------------------------------
def _git(git_dir: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], input=data, capture_output=True,
                          check=True).stdout


def _git_dir(source: Path) -> Path:
    if (source / ".git").exists():
        return source / ".git"
    if (source / "objects").is_dir() and (source / "HEAD").exists():
        return source  # a bare repository or mirror
    raise KitError(f"{source} is not a git checkout or mirror of ComfyUI, so the pinned commit cannot be checked")


def export_comfyui(source: Path, commit: str, out: Path) -> list[str]:
    """Write the tree of `commit` as comfyui.tar.gz; returns the paths whose blobs the source lacks
    (a partial mirror may miss its largest files); none of them may be a .py file."""
    git_dir = _git_dir(source)
    try:
        _git(git_dir, "cat-file", "-e", f"{commit}^{{commit}}")
    except subprocess.CalledProcessError:
        raise KitError(f"commit {commit} is not in {source}; fetch it first") from None
    entries = []
    for line in _git(git_dir, "ls-tree", "-r", "-z", commit).split(b"\0"):
        if line:
            meta, path = line.split(b"\t", 1)
            mode, kind, sha = meta.split()
            if kind == b"blob":
                entries.append((mode.decode(), sha.decode(), path.decode()))
    checks = _git(git_dir, "cat-file", "--batch-check", data="".join(f"{sha}\n" for _, sha, _ in entries).encode())
    missing_sha = {line.split()[0].decode() for line in checks.splitlines() if line.endswith(b" missing")}
    missing = [path for _, sha, path in entries if sha in missing_sha]
    if any(path.endswith(".py") for path in missing):
        raise KitError(f"{source} lacks source files of {commit}: {', '.join(missing)}")
    with tarfile.open(out, "w:gz", compresslevel=9) as tar:
        for mode, sha, path in entries:
            if sha in missing_sha:
                continue
            data = _git(git_dir, "cat-file", "blob", sha)
            info = tarfile.TarInfo(f"ComfyUI/{path}")
            if mode == "120000":
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
            else:
                info.size, info.mode = len(data), 0o755 if mode == "100755" else 0o644
            info.mtime = 0
            tar.addfile(info, None if mode == "120000" else io.BytesIO(data))
    return missing


# ---- prepare: wheels ------------------------------------------------------------------------
def _stub_wheel(folder: Path, name: str, version: str) -> None:
    """A dependency-free stand-in, so pip resolves everything else without downloading torch."""
    info = f"{name}-{version}.dist-info"
    files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: bench.gpu_kit\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}

    def digest(text: str) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{k},sha256={digest(v)},{len(v)}\n" for k, v in files.items()) + f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)


def wheel_name_version(filename: str) -> tuple[str, str]:
    parts = filename[:-len(".whl")].split("-")
    return canonical(parts[0]), parts[1]


def _wheel_requires(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        text = z.read(meta).decode("utf-8", "replace")
    return [line.split(":", 1)[1].strip() for line in text.split("\n\n", 1)[0].splitlines()
            if line.startswith("Requires-Dist:")]


def read_have(path: Path | None) -> dict[str, str | None]:
    """`pip list --format=freeze` lines (name==version) or bare names (version unknown)."""
    have: dict[str, str | None] = {}
    if path is None:
        return have
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        for word in line.split():
            if "==" in word:
                name, version = word.split("==", 1)
                have[canonical(name)] = version.strip()
            elif " @ " not in line and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", word):
                have.setdefault(canonical(word), None)
    return have


def _requirement_parts(text: str):
    from pip._vendor.packaging.requirements import Requirement  # prepare runs where pip is

    req = Requirement(text)
    return canonical(req.name), req


TRUST_BARE_NAMES_FROM = 2**20


def choose_left_out(wheels: dict[str, Path], top_level: list[str], have: dict[str, str | None],
                    python_version: str) -> dict[str, str]:
    """Which downloaded wheels the target does not need, because it has a version that fits every
    requirement on it (from the top-level files and the wheels that stay). A bare name (version
    unknown) is trusted when nothing asks for a particular version of it, or, short of an exact
    pin, when its wheel is 1 MiB or more, where leaving it out matters for the transfer; a small
    one comes along anyway, since a version too old for, say, aiohttp would stop the run."""
    from pip._vendor.packaging.version import Version

    env = {"python_version": python_version, "python_full_version": f"{python_version}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    requires = {name: _wheel_requires(path) for name, path in wheels.items()}
    left_out: dict[str, str] = {}
    while True:
        specs: dict[str, list] = {}
        for text in top_level + [r for name, reqs in requires.items() if name not in left_out for r in reqs]:
            name, req = _requirement_parts(text)
            if req.marker is None or req.marker.evaluate(env):
                specs.setdefault(name, []).append(req.specifier)
        changed = False
        for name in wheels:
            if name in left_out or name not in have:
                continue
            version, fits = have[name], True
            for spec in specs.get(name, []):
                if version is None:
                    big = wheels[name].stat().st_size >= TRUST_BARE_NAMES_FROM
                    fits = fits and (not spec or (big and not any(s.operator in ("==", "===") for s in spec)))
                else:
                    fits = fits and spec.contains(Version(version), prereleases=True)
            if fits:
                left_out[name] = f"the target has it ({version or 'version not given'})"
                changed = True
        if not changed:  # leaving one out only drops requirements, so earlier choices stay valid
            return left_out


def _store_uncompressed(src: Path, dst: Path) -> None:
    """The same wheel (same files, same RECORD) without deflate, so xz sees the raw bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            info.compress_type = zipfile.ZIP_STORED
            zout.writestr(info, data)


def _xz(src: Path, dst: Path, preset: int) -> None:
    if shutil.which("xz"):  # multi-threaded; the lzma module is not
        with open(dst, "wb") as f:
            subprocess.run(["xz", f"-{preset}", "-T0", "-c", str(src)], stdout=f, check=True)
        return
    with open(src, "rb") as fin, lzma.open(dst, "wb", preset=preset) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare(out: Path, comfy_src: Path, commit: str, repo_root: Path, python_version: str, have_file: Path | None,
            omit: list[str], full: bool, with_torch: list[str], max_mib: float, pip: list[str],
            glibc: str = GLIBC) -> dict:
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("kit.json", "comfyui.tar.gz", "wheels.tar.xz"):
        (out / stale).unlink(missing_ok=True)
    _say(f"exporting ComfyUI {commit[:12]} from {comfy_src}")
    missing = export_comfyui(comfy_src, commit, out / "comfyui.tar.gz")
    git_dir = _git_dir(comfy_src)
    comfy_requirements = _git(git_dir, "show", f"{commit}:requirements.txt").decode().splitlines()
    comfy_requirements = [r.strip() for r in comfy_requirements if r.strip() and not r.strip().startswith("#")]
    appliance_requirements = [r.strip() for r in (repo_root / "requirements.txt").read_text().splitlines()
                              if r.strip() and not r.strip().startswith("#")]
    torch_names = {canonical(_requirement_parts(t)[0]) for t in with_torch}
    stubbed = [n for n in TORCH_STACK if n not in torch_names]
    with tempfile.TemporaryDirectory(prefix="gpukit-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "stubs").mkdir()
        for name in stubbed:
            _stub_wheel(tmp / "stubs", name, STUB_VERSIONS[name])
        (tmp / "stubs.txt").write_text("".join(f"{n}=={STUB_VERSIONS[n]}\n" for n in stubbed))
        reqs = tmp / "requirements.txt"
        reqs.write_text("\n".join(appliance_requirements + comfy_requirements + with_torch) + "\n")
        platform_args = [a for p in platforms(glibc) for a in ("--platform", p)]
        command = [*pip, "download", "--disable-pip-version-check", "-d", str(tmp / "wheels"), "--only-binary=:all:",
                   "--python-version", python_version, "--implementation", "cp", *platform_args,
                   "--find-links", str(tmp / "stubs"), "-c", str(tmp / "stubs.txt"), "-r", str(reqs)]
        _say(f"pip download for cp{python_version.replace('.', '')} linux x86_64 glibc >= {glibc} (torch stack: "
             f"{'from the kit: ' + ' '.join(with_torch) if with_torch else 'the target machine' + chr(39) + 's own'})")
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(line for line in proc.stderr.splitlines() if "is ignored" not in line)[-3000:]
            raise KitError(f"pip download failed:\n{tail}")
        wheels = {}
        for path in sorted((tmp / "wheels").glob("*.whl")):
            name, _version = wheel_name_version(path.name)
            wheels[name] = path
        why = "not carried: ComfyUI runs without it" if with_torch else "not carried: the target's own is used"
        left_out: dict[str, str] = {n: why for n in stubbed}
        if not full:
            left_out.update({n: f"optional: {OPTIONAL[n]}" for n in OPTIONAL if n in wheels})
        for name in omit:
            if canonical(name) in wheels:
                left_out[canonical(name)] = "--omit"
        have = read_have(have_file)
        rest = {n: p for n, p in wheels.items() if n not in left_out}
        left_out.update(choose_left_out(rest, appliance_requirements + comfy_requirements, have, python_version))
        kept = {n: p for n, p in wheels.items() if n not in left_out}
        (tmp / "stored").mkdir()
        entries = []
        raw_total = 0
        # With torch the kit is GBs of CUDA libraries that fit no small transfer anyway: the wheels
        # stay as published and xz runs at its fastest; without, every byte counts.
        small = not with_torch
        with tarfile.open(tmp / "wheels.tar", "w") as tar:
            for name, path in sorted(kept.items()):
                stored = tmp / "stored" / path.name
                if small:
                    _store_uncompressed(path, stored)
                else:
                    stored = path
                tar.add(stored, arcname=f"wheels/{path.name}")
                raw_total += path.stat().st_size
                entries.append({"file": path.name, "name": name, "version": wheel_name_version(path.name)[1],
                                "sha256": _sha256(stored), "published_bytes": path.stat().st_size})
                if small:
                    stored.unlink()
        preset = 9 if small else 0
        _say(f"compressing {len(entries)} wheels with xz -{preset}")
        _xz(tmp / "wheels.tar", out / "wheels.tar.xz", preset)
        published = {n: p.stat().st_size for n, p in wheels.items()}
    manifest = {
        "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "comfyui": {"commit": commit, "source": str(comfy_src), "missing_files": missing},
        "python": python_version, "glibc": glibc,
        "torch": {"from": "kit" if with_torch else "target", "requirements": with_torch},
        "requirements": {"appliance": appliance_requirements, "comfyui": comfy_requirements},
        "wheels": entries,
        "left_out": {n: {"why": why, "published_bytes": published.get(n)} for n, why in sorted(left_out.items())},
        "have_file": str(have_file) if have_file else None,
    }
    (out / "kit.json").write_text(json.dumps(manifest, indent=1) + "\n")
    sizes = {f: (out / f).stat().st_size for f in ("kit.json", "comfyui.tar.gz", "wheels.tar.xz")}
    total = sum(sizes.values())
    manifest["sizes"] = sizes
    _say(f"kit: {len(entries)} wheels ({raw_total / 2**20:.1f} MiB as published) -> wheels.tar.xz "
         f"{sizes['wheels.tar.xz'] / 2**20:.1f} MiB, comfyui.tar.gz {sizes['comfyui.tar.gz'] / 2**20:.1f} MiB, "
         f"total {total / 2**20:.1f} MiB in {time.monotonic() - started:.0f} s")
    if missing:
        _say(f"not in the source, so not in the kit (no .py file, or it would have stopped): {', '.join(missing)}")
    if max_mib and total > max_mib * 2**20:
        biggest = sorted(entries, key=lambda e: -e["published_bytes"])[:8]
        raise KitError(f"the kit is {total / 2**20:.1f} MiB, over --max-mib {max_mib:g}. Biggest wheels: "
                       + ", ".join(f"{e['name']} {e['published_bytes'] / 2**20:.1f}" for e in biggest)
                       + ". Pass --have with the target's `pip list --format=freeze`, or --omit what it has.")
    return manifest


# ---- run: unpack ----------------------------------------------------------------------------
def load_manifest(kit: Path) -> dict:
    path = kit / "kit.json"
    if not path.is_file():
        raise KitError(f"no kit at {kit} (no kit.json): make one with `bench/gpu.py prepare --out DIR` on a "
                       "machine with the package registries, and carry it here")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise KitError(f"{path} is kit format {manifest.get('format')}, this script reads {FORMAT}: prepare it again")
    for name in ("comfyui.tar.gz", "wheels.tar.xz"):
        if not (kit / name).is_file():
            raise KitError(f"the kit at {kit} lacks {name} (only part of it was carried?)")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != here:
        raise KitError(f"the kit holds wheels for Python {manifest['python']}, this is Python {here} "
                       f"({sys.executable}): prepare it with --python-version {here}")
    return manifest


def _install_wheel(path: Path, site: Path) -> None:
    """Unpack one wheel into `site` the way pip lays it out (purelib/platlib; scripts and data are
    not needed here). Everything runs with PYTHONPATH=site, so it is found before the machine's own
    packages."""
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            name = info.filename
            parts = name.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                name = "/".join(parts[2:])
            target = site / name
            if not target.resolve().is_relative_to(site.resolve()):
                raise KitError(f"{path.name} holds a path outside its folder: {info.filename}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(target, mode)


def install(kit: Path, work: Path, manifest: dict) -> tuple[Path, Path]:
    """Unpack ComfyUI and the wheels under `work` (once per kit); returns (site, comfy_home)."""
    stamp = work / "kit-installed.json"
    site, comfy_home = work / "site", work / "ComfyUI"
    fingerprint = {"created": manifest["created"], "wheels": [w["sha256"] for w in manifest["wheels"]],
                   "commit": manifest["comfyui"]["commit"]}
    if stamp.is_file() and json.loads(stamp.read_text()) == fingerprint and site.is_dir() and comfy_home.is_dir():
        return site, comfy_home
    started = time.monotonic()
    for old in (site, comfy_home, work / "wheels"):
        shutil.rmtree(old, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    with tarfile.open(kit / "comfyui.tar.gz") as tar:
        tar.extractall(work, filter="data")
    with tarfile.open(kit / "wheels.tar.xz") as tar:
        tar.extractall(work, filter="data")
    site.mkdir()
    for entry in manifest["wheels"]:
        path = work / "wheels" / entry["file"]
        if _sha256(path) != entry["sha256"]:
            raise KitError(f"{entry['file']} in the kit does not match kit.json (damaged in transit?)")
        _install_wheel(path, site)
    shutil.rmtree(work / "wheels")
    stamp.write_text(json.dumps(fingerprint))
    _say(f"kit unpacked: ComfyUI {manifest['comfyui']['commit'][:12]} and {len(manifest['wheels'])} wheels "
         f"in {time.monotonic() - started:.1f} s")
    return site, comfy_home


CHECK_SCRIPT = r"""
import json, re, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
roots, allowed, ours = json.loads(sys.argv[1]), set(json.loads(sys.argv[2])), set(json.loads(sys.argv[3]))
seen, queue, problems = set(), [(r, None) for r in roots], {"stop": [], "warn": []}
while queue:
    text, parent = queue.pop()
    req = Requirement(text)
    name = canon(req.name)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    # what the kit or the requirement files ask for must hold; the machine's own packages'
    # wishes about each other are its business (reported, not fatal)
    level = "stop" if parent is None or parent.split()[0] in ours else "warn"
    who = parent or "the requirement files"
    try:
        dist = metadata.distribution(req.name)
    except metadata.PackageNotFoundError:
        if name not in allowed:
            problems[level].append(f"{text} (for {who}) is missing")
        continue
    if not req.specifier.contains(Version(dist.version), prereleases=True):
        problems[level].append(f"{text} (for {who}): {dist.version} is installed")
    if name in seen:
        continue
    seen.add(name)
    for sub in dist.requires or []:
        if "extra" not in sub.split(";", 1)[-1] or ";" not in sub:
            queue.append((sub, f"{name} {dist.version}"))
print(json.dumps(problems))
"""


def check_requirements(python: str, env: dict, manifest: dict) -> dict[str, list[str]]:
    """What the appliance's and ComfyUI's requirements (and theirs, recursively) lack in the
    environment that will run them: the kit's site on PYTHONPATH over the machine's packages.
    {"stop": [...], "warn": [...]}: `stop` concerns the requirement files or the kit's wheels."""
    roots = manifest["requirements"]["appliance"] + manifest["requirements"]["comfyui"]
    allowed = [n for n, v in manifest["left_out"].items() if v["why"].startswith("optional")] + ["torchaudio"]
    ours = [w["name"] for w in manifest["wheels"]]
    proc = subprocess.run([python, "-c", CHECK_SCRIPT, json.dumps(roots), json.dumps(allowed), json.dumps(ours)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KitError(f"could not check the requirements: {proc.stderr.strip()[-1000:]}")
    return json.loads(proc.stdout)
