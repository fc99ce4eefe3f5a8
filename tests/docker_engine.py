"""A private Docker engine for the image test, and a base image made without a registry.

The machine's own Docker service would rewrite the host firewall (FORWARD policy DROP, NAT
rules that outlive it and break later network-namespace tests), so the test runs its own
`dockerd` with its own data root, exec root and socket, no iptables and no bridge:
containers and builds use `--network host`. No container registry is reachable, so the base
image is a `debootstrap --variant=minbase` tree imported with `docker import`.

With `IMAGE_TEST_CACHE=<dir>` the engine's data root and the base tree are kept there between
runs (a rebuild then takes seconds); by default everything lives in the test's temporary
folder and is deleted with it.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests import timings

DEBIAN_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
# Seconds (and the image's MB) of each stage of the image test, for pytest's summary.
TIMINGS = timings.TIMINGS["image test"]


class EngineUnavailable(RuntimeError):
    """Raised when this machine cannot run a Docker engine (not root, no dockerd)."""


def missing_tools() -> list[str]:
    return [tool for tool in ("dockerd", "docker", "debootstrap") if shutil.which(tool) is None]


class DockerEngine:
    def __init__(self, root: Path):
        self.root = root
        self.data_root = root / "data"
        # The exec root holds runc's state and a unix socket path: keep it short (108 bytes).
        self.exec_root = Path(f"/tmp/dx-{os.getpid()}")
        self.socket = self.exec_root / "docker.sock"
        self.pidfile = self.exec_root / "docker.pid"
        self.log_path = root / "dockerd.log"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "DockerEngine":
        if os.geteuid() != 0:
            raise EngineUnavailable("a Docker engine needs root")
        if missing_tools():
            raise EngineUnavailable(f"missing {', '.join(missing_tools())} (apt-get install docker.io debootstrap)")
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.exec_root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none",
                 "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                 "--pidfile", str(self.pidfile), "-H", f"unix://{self.socket}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EngineUnavailable(f"dockerd exited {self._proc.returncode}: {self.log_tail()}")
            if self.run("version", check=False, timeout=10).returncode == 0:
                return self
            time.sleep(0.3)
        self.stop()
        raise EngineUnavailable(f"dockerd did not answer in {timeout} s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def run(self, *args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        proc = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])} … exited {proc.returncode}:\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def remove_all_containers(self) -> None:
        ids = self.run("ps", "-aq", check=False, timeout=30).stdout.split()
        if ids:
            self.run("rm", "-f", *ids, check=False, timeout=120)

    def stop(self) -> None:
        """Stop the daemon (its containers first) and unmount what it left under the exec root."""
        if self._proc is not None and self._proc.poll() is None:
            self.remove_all_containers()
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        # containerd-shims live in their own sessions; none may outlive the test.
        subprocess.run(["pkill", "-f", f"containerd-shim.*{self.exec_root}"], check=False)
        subprocess.run(["pkill", "-f", f"containerd.*{self.exec_root}"], check=False)
        for mount in sorted(_mounts_under(self.exec_root) + _mounts_under(self.data_root), reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.exec_root, ignore_errors=True)

    def has_image(self, tag: str) -> bool:
        return self.run("image", "inspect", tag, check=False, timeout=30).returncode == 0


def _mounts_under(folder: Path) -> list[str]:
    prefix = str(folder)
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    return [line.split()[1] for line in lines if line.split()[1].startswith(prefix)]


def build_base(engine: DockerEngine, tree: Path, tag: str) -> None:
    """A minimal Debian image standing in for the CUDA base (which comes from a registry).

    Like ubuntu:24.04 and the CUDA images built on it, it has a user with uid 1000, so the
    Dockerfile's own user is proven to coexist with one. It trusts the host's extra CA
    certificates (the registries are reached through a TLS proxy here) and pip uses the
    system bundle they are merged into.
    """
    if not (tree / "usr" / "bin").is_dir():
        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(tree), DEBIAN_MIRROR],
                       check=True, capture_output=True, timeout=900)
    ca_dir = tree / HOST_CA_DIR.relative_to("/")
    ca_dir.mkdir(parents=True, exist_ok=True)
    for cert in HOST_CA_DIR.glob("*.crt"):
        shutil.copy(cert, ca_dir / cert.name)
    (tree / "etc" / "pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    has_uid_1000 = any(line.split(":")[2] == "1000"
                       for line in (tree / "etc" / "passwd").read_text().splitlines() if line.count(":") >= 2)
    if not has_uid_1000:
        subprocess.run(["chroot", str(tree), "useradd", "--create-home", "--uid", "1000", "--user-group", "ubuntu"],
                       check=True, capture_output=True)
    tar = subprocess.Popen(["tar", "-C", str(tree), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    try:
        engine.run("import", "-", tag, stdin=tar.stdout, timeout=600)
    finally:
        tar.stdout.close()
        tar.wait()
