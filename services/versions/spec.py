"""Version specs: `versions/<id>.json`, validated against `versions/schema.json`.

A spec is loaded on every job, so parsed specs are cached by (path, mtime_ns, size): an
unchanged file costs one stat(). The id check runs before any path is built, so an id can
never name a file outside the versions folder, nor the schema that sits beside the specs.
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from services.errors import AppError
from services.jobs.parameters import Parameter, declare

# Same rule as the schema's $defs.version_id: no '/', no '..', no leading dot. `\Z`, not `$`:
# `$` also matches before a final newline, and callers use `.match` (a "demo\n" job_id once
# reached a Location header and the client got no answer at all).
VERSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*\Z")
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "versions" / "schema.json"
# Files in the versions folder that are not specs (compared case-insensitively: macOS).
NOT_SPECS = frozenset({SCHEMA_PATH.stem})


@dataclass(frozen=True)
class RepoPin:
    repo: str
    commit: str


@dataclass(frozen=True)
class CustomNode:
    name: str
    repo: str
    commit: str
    requirements: tuple[str, ...] | None  # None: use the node's requirements.txt if any


@dataclass(frozen=True)
class ModelSpec:
    name: str
    type: str
    url: str
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class VersionSpec:
    id: str
    description: str
    comfyui: RepoPin
    comfy_args: tuple[str, ...]
    custom_nodes: tuple[CustomNode, ...]
    models: tuple[ModelSpec, ...]
    python_requirements: tuple[str, ...]
    allow_base_overrides: tuple[str, ...]
    workflow: dict[str, Any] | None
    path: Path
    raw: dict[str, Any] = field(repr=False, compare=False)
    stall_timeout: float | None = None  # None: STALL_TIMEOUT
    # Named parameters over `workflow`, whose defaults are written into it (services/jobs/parameters.py).
    parameters: dict[str, Parameter] = field(default_factory=dict, compare=False)


def check_version_id(version_id: Any) -> str:
    if not isinstance(version_id, str) or not version_id:
        raise AppError("invalid_payload", "version_id must be a non-empty string", suffix="version_id")
    if len(version_id) > 64 or not VERSION_ID_RE.match(version_id):
        shown = "".join(c for c in version_id[:64] if c.isprintable())  # it becomes part of the code
        raise AppError("invalid_version_id", "version ids are letters, digits, '.', '_' and '-' "
                       "(no '/', no '..', at most 64 characters)", suffix=shown)
    return version_id


class SpecStore:
    """Loads and caches the specs of one versions folder."""

    def __init__(self, versions_dir: Path):
        self.versions_dir = Path(versions_dir)
        self._cache: dict[str, tuple[tuple[int, int], VersionSpec]] = {}
        self._lock = threading.Lock()
        self._validator: jsonschema.protocols.Validator | None = None

    def _schema_validator(self):
        if self._validator is None:
            schema = json.loads(SCHEMA_PATH.read_text())
            self._validator = jsonschema.Draft202012Validator(schema)
        return self._validator

    def ids(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.stem for p in self.versions_dir.glob("*.json")
                      if p.stem.lower() not in NOT_SPECS and VERSION_ID_RE.match(p.stem))

    def load(self, version_id: Any) -> VersionSpec:
        version_id = check_version_id(version_id)
        path = self.versions_dir / f"{version_id}.json"
        if version_id.lower() in NOT_SPECS:
            raise AppError("unknown_version", "schema.json is the specs' JSON Schema, not a version",
                           suffix=version_id)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise AppError("unknown_version", f"no spec {path.name} in the versions folder",
                           suffix=version_id) from None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._cache.get(version_id)
            if cached and cached[0] == stamp:
                return cached[1]
        spec = self._parse(version_id, path)
        with self._lock:
            self._cache[version_id] = (stamp, spec)
        return spec

    def _parse(self, version_id: str, path: Path) -> VersionSpec:
        def invalid(where: str, detail: str) -> AppError:
            return AppError("invalid_version_spec", detail, suffix=f"{version_id}:{where}")

        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise invalid(f"line {exc.lineno} column {exc.colno}", f"not valid JSON: {exc.msg}") from None
        except UnicodeDecodeError:
            raise invalid("encoding", "not UTF-8 text") from None
        errors = sorted(self._schema_validator().iter_errors(raw), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = "/" + "/".join(str(p) for p in first.absolute_path)
            raise invalid(where, first.message)
        if raw["id"] != version_id:
            raise invalid("/id", f"id {raw['id']!r} differs from the file name {path.name!r}")
        names = [node["name"] for node in raw.get("custom_nodes", [])]
        if len(names) != len(set(names)):
            raise invalid("/custom_nodes", "two custom nodes share a name")
        python = raw.get("python", {})
        parameters, workflow = declare(raw.get("parameters", {}), raw.get("workflow"), invalid)
        return VersionSpec(
            id=version_id,
            description=raw.get("description", ""),
            comfyui=RepoPin(raw["comfyui"]["repo"], raw["comfyui"]["commit"]),
            comfy_args=tuple(raw["comfyui"].get("args", ())),
            custom_nodes=tuple(
                CustomNode(n["name"], n["repo"], n["commit"],
                           tuple(n["requirements"]) if "requirements" in n else None)
                for n in raw.get("custom_nodes", ())),
            models=tuple(ModelSpec(m["name"], m["type"], m["url"], m.get("size"), m.get("sha256"))
                         for m in raw.get("models", ())),
            python_requirements=tuple(python.get("requirements", ())),
            allow_base_overrides=tuple(python.get("allow_base_overrides", ())),
            workflow=workflow,
            path=path,
            stall_timeout=raw.get("stall_timeout"),
            parameters=parameters,
            raw=raw,
        )
