"""Jobs never read each other's files: the rule for a workflow's file inputs.

ComfyUI itself does not isolate anything: `LoadImage` (and every loader built on
`folder_paths.get_annotated_filepath`) accepts any name whose path exists: subfolders, `..`,
absolute paths, and the `[output]`, `[input]`, `[temp]` annotations that pick another folder.
So a job could load `jobs/<other job>/x.png` or `x.png [output]`. Before a workflow reaches
ComfyUI, every file input must therefore name either
- one of the job's own `images` (by the `name` it was sent with; the runner then points it at
  the job's private folder), or
- a file the version ships: a plain relative name from the options ComfyUI itself offers for
  that input (files present when ComfyUI started, never under the per-job `jobs/` folder).
Anything else is `forbidden_input:<node_id>`.

Which inputs are file inputs comes from ComfyUI's own `/object_info` (so custom nodes count
too): inputs whose options carry an upload flag (`image_upload`, `video_upload`,
`audio_upload`, `file_upload`, ...), plus the few core loaders that read the input folder
without one (`EXTRA_FILE_INPUTS`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator

from services.errors import AppError

JOBS_FOLDER = "jobs"  # the per-job subfolder of ComfyUI's input and output folders

# Core loaders that read ComfyUI's input folder although their options carry no upload flag.
EXTRA_FILE_INPUTS = frozenset({
    ("LoadLatent", "latent"),
    ("WebcamCapture", "image"),
    ("LoadImageSetFromFolderNode", "folder"),
    ("LoadImageTextSetFromFolderNode", "folder"),
    ("GeminiInputFiles", "file"),
    ("OpenAIInputFiles", "file"),
})

# folder_paths.annotated_filepath: a name ending in one of these is read from that folder.
_ANNOTATIONS = ("[output]", "[input]", "[temp]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NODE_ID_SAFE = re.compile(r"[^A-Za-z0-9_.:-]+")


def is_upload_flag(key: str) -> bool:
    return key == "upload" or key.endswith("_upload")


def combo_choices(spec: Any) -> tuple[list, dict]:
    """(choices, options) of an /object_info input spec: `[[choices], {...}]` or `["COMBO", {"options": [...]}]`."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return [], {}
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    choices = spec[0] if isinstance(spec[0], list) else options.get("options")
    return (choices if isinstance(choices, list) else []), options


@dataclass(frozen=True)
class FileInputs:
    """class_type -> input name -> the names ComfyUI offers for it that a job may use."""
    by_class: dict[str, dict[str, frozenset[str]]]

    @classmethod
    def from_object_info(cls, info: dict[str, Any]) -> "FileInputs":
        by_class: dict[str, dict[str, frozenset[str]]] = {}
        for class_type, node in (info or {}).items():
            for name, spec in input_specs(node):
                choices, options = combo_choices(spec)
                if (class_type, name) in EXTRA_FILE_INPUTS or any(is_upload_flag(k) for k in options):
                    shipped = frozenset(c for c in choices if isinstance(c, str) and is_shipped_name(c))
                    by_class.setdefault(class_type, {})[name] = shipped
        return cls(by_class)


def input_specs(node: Any) -> Iterator[tuple[str, Any]]:
    """(name, spec) of every input group (required, optional, hidden) of one /object_info entry."""
    groups = node.get("input") if isinstance(node, dict) else None
    for group in groups.values() if isinstance(groups, dict) else ():
        if isinstance(group, dict):
            yield from group.items()


def is_shipped_name(name: str) -> bool:
    """A plain relative name outside the per-job folders: what a shipped file may be called."""
    if not name or name != name.strip() or _CONTROL.search(name) or "\\" in name:
        return False
    if name.startswith("/") or name.endswith(_ANNOTATIONS):
        return False
    parts = name.split("/")
    return parts[0] != JOBS_FOLDER and all(part not in ("", ".", "..") for part in parts)


def check_file_inputs(workflow: dict[str, Any], file_inputs: FileInputs, own_names: set[str]) -> None:
    """Raise forbidden_input:<node_id> for the first file input that is neither the job's own
    image nor a file the version ships. Links and non-strings are refused too: a link would let
    another node compute the name after this check."""
    for node_id, node in workflow.items():
        wanted = file_inputs.by_class.get(node.get("class_type"))
        inputs = node.get("inputs")
        if not wanted or not isinstance(inputs, dict):
            continue
        for name, shipped in wanted.items():
            if name not in inputs:
                continue
            problem = _problem(inputs[name], shipped, own_names)
            if problem:
                safe_id = _NODE_ID_SAFE.sub("_", str(node_id))[:40]
                raise AppError("forbidden_input", f"node {safe_id} ({node['class_type']}) input {name!r}: {problem}; "
                               "name one of this job's images or a file the version ships", suffix=safe_id)


def _problem(value: Any, shipped: frozenset[str], own_names: set[str]) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("__value__"), list):
        # The frontend's wrapping of list-valued widgets (batch loaders): every name must pass.
        return next((p for p in (_problem(v, shipped, own_names) for v in value["__value__"]) if p), None)
    if isinstance(value, list):
        return "a file input cannot be linked to another node's output"
    if not isinstance(value, str):
        return "a file input must be a file name (a string)"
    if value in own_names or value in shipped:
        return None
    return f"{value[:80]!r} is not one of this job's images nor a file the version ships"
