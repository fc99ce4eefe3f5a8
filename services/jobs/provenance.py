"""Provenance of a job's result: what exactly produced it, so a result can be traced and redone.

`build` answers, for the code: the version, ComfyUI's commit and each custom node's commit as
installed (the version's lock file; in developer mode the COMFY_HOME checkout's git HEAD; a
ComfyUI someone else runs is `external` and its commits are unknown); for the weights: each
model's sha256 as the hash index verified it, never the spec's claim; for the input: the
workflow's sha256 and its seeds. `OutputStamp` carries that to each delivered output: whether
ComfyUI computed it in this job or served it from its cache, an opt-in PNG text chunk, and the
flat string metadata an upload destination attaches to the object.

The workflow hash is of the workflow as the caller sent it (or `workflow_url`/the version's
default resolved to), before the appliance gives save nodes their per-job folders, so a
caller can recompute it: sha256 of `json.dumps(workflow, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)` in UTF-8 (lone surrogates, valid JSON but not UTF-8, as surrogatepass encodes them).
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.comfy.history import OutputFile, PromptOutcome
from services.models.cache import FILENAME_RE, Target, index_path, model_roots
from services.models.index import HashIndex
from services.models.verify import targets_of
from services.versions import git, proc
from services.versions.layout import Layout
from services.versions.spec import VersionSpec

COMFY_HOME_LABEL = "comfy_home:"  # a provider's current_version in developer mode
SEED_INPUTS = ("seed", "noise_seed")
# File suffixes ComfyUI's loaders read (folder_paths.supported_pt_extensions, plus GGUF loaders).
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl", ".sft", ".gguf")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_KEYWORD = "appliance-provenance"


def workflow_sha256(workflow: dict[str, Any]) -> str:
    canonical = json.dumps(workflow, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a lone surrogate ("\ud800") is valid JSON but not UTF-8; valid text hashes as UTF-8.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def build(spec: VersionSpec, settings, workflow: dict[str, Any], in_use: str | None) -> dict[str, Any]:
    """The job's provenance; `in_use` is the provider's current_version while the job held
    ComfyUI. File reads and stat() calls only (plus `git rev-parse` in developer mode): run it
    in a thread."""
    return {"version_id": spec.id, **_code(spec, settings, in_use),
            "models": _models(spec, settings, workflow),
            "workflow_sha256": workflow_sha256(workflow), "seeds": seeds(workflow)}


def seeds(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Literal seed inputs by node id. A seed wired from another node is listed under that
    node when its own input is called `seed`/`noise_seed` (a primitive's `value` is not)."""
    found: dict[str, dict[str, Any]] = {}
    for node_id, node in workflow.items():
        inputs = node.get("inputs") or {}
        for name in SEED_INPUTS:
            value = inputs.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found.setdefault(str(node_id), {})[name] = value
    return found


def _code(spec: VersionSpec, settings, in_use: str | None) -> dict[str, Any]:
    if in_use is None:
        return {"runtime": "external", "comfyui_commit": None,
                "custom_nodes": {n.name: None for n in spec.custom_nodes}}
    if in_use.startswith(COMFY_HOME_LABEL):
        home = Path(in_use[len(COMFY_HOME_LABEL):])
        return {"runtime": "comfy_home", "comfyui_commit": _head(home),
                "custom_nodes": {n.name: _head(home / "custom_nodes" / n.name) for n in spec.custom_nodes}}
    lock = Layout.of(settings.versions_root, in_use).tree.read_lock() or {}
    comfyui = lock.get("comfyui") if isinstance(lock.get("comfyui"), dict) else {}
    nodes = [n for n in lock.get("custom_nodes") or [] if isinstance(n, dict)]
    return {"runtime": "version", "comfyui_commit": comfyui.get("commit"),
            "custom_nodes": {n.get("name"): n.get("commit") for n in nodes}}


def _head(checkout: Path) -> str | None:
    # Only a checkout's own .git: inside another repository git would answer with that one's HEAD.
    if not (checkout / ".git").exists():
        return None
    try:
        return git.head(checkout)
    except proc.ToolFailed:
        return None


def _models(spec: VersionSpec, settings, workflow: dict[str, Any]) -> list[dict[str, Any]]:
    index = HashIndex(index_path(settings))
    listed: list[dict[str, Any]] = []
    for model, target in zip(spec.models, targets_of(settings, spec.models)):
        if isinstance(target, Target):
            listed.append({"name": model.name, "type": target.type, "sha256": _verified(index, target.path),
                           "in_spec": True})
        else:  # a name the cache refuses: the job failed model_missing before it got here
            listed.append({"name": model.name, "type": model.type, "sha256": None, "in_spec": True})
    known = {(m["type"], m["name"]) for m in listed}
    for name in _model_names(workflow):
        found = _find(settings, name)
        if found is not None and (found[0], name) not in known:
            known.add((found[0], name))
            listed.append({"name": name, "type": found[0], "sha256": _verified(index, found[1]), "in_spec": False})
    return listed


def _verified(index: HashIndex, path: Path) -> str | None:
    """The index's hash while the file is unchanged since it was hashed; never hashes here
    (a model may be 30 GB): a file nobody verified reports None."""
    try:
        return index.lookup(path, os.stat(path))
    except OSError:
        return None


def _model_names(workflow: dict[str, Any]) -> list[str]:
    names = []
    for node in workflow.values():
        for value in (node.get("inputs") or {}).values():
            if (isinstance(value, str) and value.lower().endswith(MODEL_SUFFIXES)
                    and all(FILENAME_RE.match(part) for part in value.split("/"))):
                names.append(value)  # the parts check keeps `..` and absolute paths out
    return names


def _find(settings, name: str) -> tuple[str, Path] | None:
    """(type folder, path) of `root/<type>/<name>` in the model roots, searched in ComfyUI's order."""
    for root in model_roots(settings):
        try:
            folders = sorted(p for p in root.iterdir() if not p.name.startswith("."))
        except OSError:
            continue
        for folder in folders:
            if (folder / name).is_file():
                return folder.name, folder / name
    return None


def cached_outputs(prompt: dict[str, Any], outcome: PromptOutcome) -> frozenset[str]:
    """Output nodes nothing of which ComfyUI computed in this job: the node itself, or every node
    upstream of it, was served from ComfyUI's cache. Save nodes always run again (their
    filename prefix names the job), so an identical re-run counts as cached by its upstream."""
    cached = set(outcome.cached_nodes)
    nodes = {f.node_id for f in outcome.files} | {t.node_id for t in outcome.texts}
    return frozenset(n for n in nodes if n in cached or _upstream_cached(prompt, n, cached))


def _upstream_cached(prompt: dict[str, Any], node_id: str, cached: set[str]) -> bool:
    seen: set[str] = set()
    todo = _links(prompt, node_id)
    while todo:
        upstream = todo.pop()
        if upstream in seen:
            continue
        seen.add(upstream)
        if upstream not in cached:
            return False
        todo.extend(_links(prompt, upstream))
    return bool(seen)


def _links(prompt: dict[str, Any], node_id: str) -> list[str]:
    node = prompt.get(node_id)
    inputs = node.get("inputs") if isinstance(node, dict) else None
    return [str(v[0]) for v in (inputs or {}).values()
            if isinstance(v, list) and len(v) == 2 and str(v[0]) in prompt]


@dataclass(frozen=True)
class OutputStamp:
    """What each delivered output of one job carries of the job's provenance."""

    provenance: dict[str, Any]
    cached_nodes: frozenset[str]
    png: bool  # PROVENANCE_PNG

    @classmethod
    def of(cls, provenance: dict[str, Any], prompt: dict[str, Any], outcome: PromptOutcome,
           settings) -> "OutputStamp":
        return cls(provenance, cached_outputs(prompt, outcome), settings.provenance_png)

    def cached(self, node_id: str) -> bool:
        return node_id in self.cached_nodes

    def apply(self, output: OutputFile, data: bytes) -> bytes:
        """The bytes to deliver: with PROVENANCE_PNG a PNG gains an `appliance-provenance` text chunk."""
        if not self.png or not data.startswith(PNG_SIGNATURE):
            return data
        text = json.dumps({**self.provenance, "node_id": output.node_id, "cached": self.cached(output.node_id)},
                          sort_keys=True, separators=(",", ":"))  # ASCII: tEXt is Latin-1
        return add_png_text(data, PNG_KEYWORD, text)

    def metadata(self, output: OutputFile) -> dict[str, str]:
        return object_metadata(self.provenance, self.cached(output.node_id))


def object_metadata(provenance: dict[str, Any], cached: bool) -> dict[str, str]:
    """Flat string metadata for an uploaded object (GCS custom metadata and the like)."""
    meta = {"appliance-version-id": provenance["version_id"],
            "appliance-workflow-sha256": provenance["workflow_sha256"],
            "appliance-cached": "true" if cached else "false"}
    if provenance.get("comfyui_commit"):
        meta["appliance-comfyui-commit"] = provenance["comfyui_commit"]
    return meta


def add_png_text(data: bytes, keyword: str, text: str) -> bytes:
    """Insert a tEXt chunk before IEND. The pixels are not re-encoded (Pillow's PngInfo would),
    and the chunks already there (ComfyUI's `prompt`/`workflow`) stay as they are. Data that is
    not a well-formed chunk sequence is returned unchanged."""
    body = keyword.encode("latin-1") + b"\0" + text.encode("latin-1")
    chunk = (len(body).to_bytes(4, "big") + b"tEXt" + body
             + zlib.crc32(b"tEXt" + body).to_bytes(4, "big"))
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IEND":
            return data[:pos] + chunk + data[pos:]
        pos += 12 + length
    return data
