"""Git checkouts pinned to one commit, and the questions `verify` asks them.

A checkout fetches just the pinned commit (`--depth 1`): GitHub and git's own protocol v2
serve any commit by id, so a ComfyUI install does not download its whole history. A server
that refuses an unadvertised commit gets a second, full fetch; only then is a commit that is
still absent reported as missing, so "no such commit" and "cannot reach the repository" stay
two different errors.
"""
from __future__ import annotations

from pathlib import Path

from services.versions import proc

# Never prompt for credentials (a private repo would hang the installer), and give up on a
# transfer that stalls instead of waiting on it forever.
_ENV = {"GIT_TERMINAL_PROMPT": "0"}
_CONFIG = ("-c", "advice.detachedHead=false", "-c", "init.defaultBranch=main",
           "-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=60")


class FetchFailed(Exception):
    """The repository could not be fetched at all."""


class NoSuchCommit(Exception):
    """The repository was fetched but does not contain the commit."""


def source(repo: str, spec_dir: Path) -> str:
    """A spec's repo as git should see it: URLs and absolute paths as they are, a relative path
    against the spec's folder (not wherever the installer happens to run)."""
    if "://" in repo or Path(repo).is_absolute() or ":" in repo.split("/", 1)[0]:
        return repo
    return str((spec_dir / repo).resolve())


def git(*args: str | Path, cwd: Path | None = None) -> str:
    return proc.run(["git", *_CONFIG, *args], cwd=cwd, env=_ENV)


def checkout(repo: str, commit: str, dest: Path) -> None:
    """Make `dest` (absent or empty) a checkout of `repo` at `commit`, submodules included."""
    dest.mkdir(parents=True, exist_ok=True)
    git("init", "-q", cwd=dest)
    git("remote", "add", "origin", repo, cwd=dest)
    try:
        git("fetch", "-q", "--depth", "1", "origin", commit, cwd=dest)
    except proc.ToolFailed:
        try:
            git("fetch", "-q", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*", cwd=dest)
        except proc.ToolFailed as exc:
            raise FetchFailed(exc.tail) from None
        if not has_commit(dest, commit):
            raise NoSuchCommit(f"commit {commit} is not in {proc.mask(repo)}") from None
    git("checkout", "-q", "--detach", commit, cwd=dest)
    if (dest / ".gitmodules").is_file():
        try:
            git("submodule", "update", "-q", "--init", "--recursive", "--depth", "1", cwd=dest)
        except proc.ToolFailed as exc:
            raise FetchFailed(f"submodules: {exc.tail}") from None


def has_commit(dest: Path, commit: str) -> bool:
    try:
        git("cat-file", "-e", f"{commit}^{{commit}}", cwd=dest)
    except proc.ToolFailed:
        return False
    return True


def head(dest: Path) -> str | None:
    try:
        return git("rev-parse", "HEAD", cwd=dest).strip()
    except proc.ToolFailed:
        return None


def modified(dest: Path) -> list[str]:
    """Tracked files changed since the checkout (files a node writes beside itself do not count)."""
    out = git("status", "--porcelain", "--untracked-files=no", cwd=dest)
    return [line[3:] for line in out.splitlines() if line.strip()]
