"""Shared helpers of the model-store tests: settings in a temporary folder, payloads, a spec."""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
from pathlib import Path

import pytest

from services.config import Settings
from services.models.cache import Target, cache_root, index_path
from services.models.fetch import ensure_model
from services.models.index import HashIndex
from services.models.locks import owner_token
from tests.http_server import LocalServer

FAST = {
    "DOWNLOAD_RETRY_BASE_SLEEP": "0.01",
    "DOWNLOAD_TIMEOUT": "1",
    "DOWNLOAD_SEGMENT_MIN_BYTES": str(1 << 20),
    "DOWNLOAD_PIECE_BYTES": str(256 << 10),
    "LOG_SILENT": "1",
    # The model servers of these tests listen on loopback, which the fetch policy refuses unless
    # told otherwise (tests/test_ssrf_attacks.py checks the refusals themselves).
    "FETCH_ALLOW_HOSTS": "127.0.0.1 localhost",
}


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"DATA_ROOT": str(tmp_path / "data"), "VERSIONS_DIR": str(tmp_path / "versions"), **FAST, **extra}


def make_settings(tmp_path: Path, **extra: str) -> Settings:
    return Settings.from_env(env_for(tmp_path, **extra))


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def target(settings: Settings, name: str = "m.safetensors", type: str = "checkpoints") -> Target:
    return Target.of(cache_root(settings), type, name)


def fetch(settings: Settings, url: str, data: bytes | None, name: str = "m.safetensors", *,
          size: int | None = -1, sha256: str | None = "", **kw):
    """ensure_model for `data` served at `url`; size/sha256 default to the data's own."""
    return ensure_model(target(settings, name), url,
                        size=len(data) if size == -1 else size,
                        sha256=sha(data) if sha256 == "" else sha256,
                        settings=settings, index=HashIndex(index_path(settings)), owner=owner_token(), **kw)


def write_spec(settings: Settings, version_id: str, models: list[dict]) -> None:
    settings.versions_dir.mkdir(parents=True, exist_ok=True)
    spec = {"id": version_id, "comfyui": {"repo": "https://github.com/Comfy-Org/ComfyUI.git", "commit": "a" * 40},
            "models": models}
    (settings.versions_dir / f"{version_id}.json").write_text(json.dumps(spec))


def dead_owner() -> str:
    """An owner token of this host whose process has certainly exited."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    host, _, rand = owner_token().split("~")
    return f"{host}~{proc.pid}~{rand}"


def litter(folder: Path) -> list[str]:
    """Hidden files a download left in a folder (partials, locks)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


@pytest.fixture
def server():
    with LocalServer() as local:
        yield local
