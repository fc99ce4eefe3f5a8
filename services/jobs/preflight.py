"""Pre-flight: refuse a workflow this version cannot run before ComfyUI sees it, naming every
problem at once.

ComfyUI's own validation stops at the first unknown node class (`invalid_prompt`, one node) and
reports a missing model as one `value_not_in_list` among other per-node errors, so a caller fixes
a workflow one round trip at a time. Pre-flight checks, against the running ComfyUI's
`/object_info` (fetched once per ComfyUI start: `ComfyClient.object_info_once`):

- every node's `class_type` is a node this ComfyUI loaded, and
- every model input names a file this ComfyUI can load,

and answers all of it in one `workflow_rejected:missing_nodes` or `workflow_rejected:missing_models`
(400) whose body carries both lists, each entry with close matches ("did you mean").

Model inputs come from `/object_info` itself, so custom loaders count: a COMBO input (no upload
flag: those are job files, services/jobs/file_inputs.py) whose options list model files (a name
with a loader's suffix), or whose list is empty and whose name says it is one (`ckpt_name`,
`lora_name`, `clip_name2`: `*_name[N]`), since an empty folder lists nothing to recognise.

The node list is fixed for a ComfyUI start; model folders are not (modelsync, `/download`), and
ComfyUI lists them afresh on every request. So a name the cached copy lacks is looked up again
in `/object_info/<class>` of its node before it is refused: a valid job costs no round trip, a
model added since ComfyUI started one small one. The version's own models (verified or fetched by
the runner before ComfyUI is asked for), and those a job brings (`models`), count as present.
"""
from __future__ import annotations

import asyncio
import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable
from urllib.parse import quote

from services.comfy.client import ComfyClient
from services.errors import AppError
from services.jobs.file_inputs import EXTRA_FILE_INPUTS, combo_choices, input_specs, is_upload_flag
from services.jobs.provenance import MODEL_SUFFIXES

_NAMED_MODEL_INPUT = re.compile(r"_name\d*$")
MAX_REPORTED = 100  # entries per list: a huge broken workflow must not make a huge error (or CPU for suggestions)
DETAIL_ITEMS = 5  # entries per kind in the one-line detail (serverless keeps only that line)
MAX_TEXT = 120  # characters of a caller's name echoed back


@dataclass(frozen=True)
class Catalog:
    """What one ComfyUI can run: its node classes, and per loader input the model names it lists."""
    classes: frozenset[str]
    model_inputs: dict[str, dict[str, frozenset[str]]]

    @classmethod
    def from_object_info(cls, info: dict[str, Any]) -> "Catalog":
        info = info if isinstance(info, dict) else {}
        return cls(frozenset(info), _model_inputs(info))

    def updated(self, info: dict[str, Any]) -> "Catalog":
        """The same catalogue with these classes' model lists taken from a fresher `/object_info`."""
        fresh = _model_inputs({k: v for k, v in info.items() if k in self.classes} if isinstance(info, dict) else {})
        return Catalog(self.classes, {**self.model_inputs, **fresh})


def _model_inputs(info: dict[str, Any]) -> dict[str, dict[str, frozenset[str]]]:
    found: dict[str, dict[str, frozenset[str]]] = {}
    for class_type, node in info.items():
        for name, spec in input_specs(node):
            if (class_type, name) in EXTRA_FILE_INPUTS or not _is_combo(spec):
                continue
            choices, options = combo_choices(spec)
            if any(is_upload_flag(k) for k in options) or "remote" in options:
                continue  # job files (file_inputs.py), or a list the frontend fetches elsewhere
            names = [c for c in choices if isinstance(c, str)]
            lists_models = any(c.lower().endswith(MODEL_SUFFIXES) for c in names)
            if lists_models or (not names and _NAMED_MODEL_INPUT.search(name)):
                found.setdefault(class_type, {})[name] = frozenset(names)
    return found


def _is_combo(spec: Any) -> bool:
    """`[[choices], {...}]` (classic nodes) or `["COMBO", {"options": [...]}]` (the newer schema)."""
    return isinstance(spec, (list, tuple)) and bool(spec) and (isinstance(spec[0], list) or spec[0] == "COMBO")


@dataclass
class Missing:
    nodes: list[dict[str, Any]] = field(default_factory=list)   # {node_id, class_type}
    models: list[dict[str, Any]] = field(default_factory=list)  # {node_id, class_type, input, name}

    def __bool__(self) -> bool:
        return bool(self.nodes or self.models)


def find_missing(prompt: dict[str, Any], catalog: Catalog, present: frozenset[str] = frozenset()) -> Missing:
    """Unknown node classes and model names not in their input's list (nor in `present`).
    Links and non-string values are left to ComfyUI's validation: they name no file here."""
    missing = Missing()
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        if class_type not in catalog.classes:
            missing.nodes.append({"node_id": str(node_id), "class_type": class_type})
            continue
        inputs = node.get("inputs")
        for name, listed in catalog.model_inputs.get(class_type, {}).items():
            value = inputs.get(name) if isinstance(inputs, dict) else None
            if isinstance(value, str) and value not in listed and value not in present:
                missing.models.append({"node_id": str(node_id), "class_type": class_type, "input": name,
                                       "name": value})
    return missing


def rejection(missing: Missing, catalog: Catalog) -> AppError:
    """One typed error for everything missing. A missing node wins the code: it needs another
    version (a custom node), and its own model inputs could not even be checked."""
    kind = "missing_nodes" if missing.nodes else "missing_models"
    nodes = [{**entry, "class_type": _short(entry["class_type"]),
              "suggestions": _close(entry["class_type"], catalog.classes)} for entry in missing.nodes[:MAX_REPORTED]]
    models = [{**entry, "name": _short(entry["name"]),
               "suggestions": _close(entry["name"], catalog.model_inputs[entry["class_type"]][entry["input"]])}
              for entry in missing.models[:MAX_REPORTED]]
    parts = []
    if missing.nodes:
        parts.append(f"{len(missing.nodes)} node class(es) this version does not have: "
                     + _listed([f"node {e['node_id'][:40]} {e['class_type']!r}{_hint(e)}" for e in nodes],
                               len(missing.nodes)))
    if missing.models:
        parts.append(f"{len(missing.models)} model(s) this version cannot load: "
                     + _listed([f"node {e['node_id'][:40]} {e['input']} {e['name']!r}{_hint(e)}" for e in models],
                               len(missing.models)))
    return AppError("workflow_rejected", "; ".join(parts), suffix=kind,
                    extra={"missing_nodes": nodes, "missing_models": models})


def _close(name: Any, available: Iterable[str]) -> list[str]:
    """Up to 3 close matches, case-insensitively ("ksampler" finds "KSampler")."""
    if not isinstance(name, str):
        return []
    by_lower: dict[str, str] = {}
    for candidate in sorted(available):
        by_lower.setdefault(candidate.lower(), candidate)
    return [by_lower[m] for m in difflib.get_close_matches(name[:MAX_TEXT].lower(), list(by_lower), n=3, cutoff=0.6)]


def _short(value: Any) -> Any:
    return value[:MAX_TEXT] if isinstance(value, str) else value


def _hint(entry: dict[str, Any]) -> str:
    return f" (did you mean {', '.join(map(repr, entry['suggestions']))}?)" if entry["suggestions"] else ""


def _listed(items: list[str], total: int) -> str:
    shown = ", ".join(items[:DETAIL_ITEMS])
    return shown + (f" and {total - DETAIL_ITEMS} more" if total > DETAIL_ITEMS else "")


_memo: tuple[dict, Catalog] | None = None


def catalog_of(info: dict[str, Any]) -> Catalog:
    """The catalogue of a cached `/object_info`: object_info_once hands out the same dict until
    ComfyUI restarts, so it is built once per start, not per job."""
    global _memo
    if _memo is None or _memo[0] is not info:
        _memo = (info, Catalog.from_object_info(info))
    return _memo[1]


async def check(comfy: ComfyClient, prompt: dict[str, Any], info: dict[str, Any], fetched: Iterable[Any]) -> None:
    """Raise `workflow_rejected:missing_nodes|missing_models` for everything of `prompt` that the
    ComfyUI behind `comfy` (whose cached `/object_info` is `info`) cannot run. `fetched`: the
    models (`.name`) the runner verified or fetched for this job: the version's and the job's own."""
    catalog = catalog_of(info)
    present = frozenset(model.name for model in fetched)
    missing = find_missing(prompt, catalog, present)
    if missing.models:
        stale = sorted({entry["class_type"] for entry in missing.models})
        for fresh in await asyncio.gather(*(comfy.object_info(quote(class_type, safe="")) for class_type in stale)):
            catalog = catalog.updated(fresh)
        missing = find_missing(prompt, catalog, present)
    if missing:
        # Suggestions compare names with difflib: off the event loop, which serves other jobs.
        raise await asyncio.to_thread(rejection, missing, catalog)
