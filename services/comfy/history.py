"""Reading ComfyUI's history entry of one prompt: how it ended and which files it produced.

The history entry is the authority on a finished prompt: it is written before the final
`executing {node: null}` and also covers nodes served from ComfyUI's cache (a fully cached
rerun writes no new file; its entry points at the earlier one, which is still a result).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.errors import AppError
from services.gpu import faults

# Output keys whose entries are files, and what they hold. Anything else with a `filename`
# is still collected (custom nodes invent keys), as kind "file".
_KINDS = {"images": "image", "gifs": "video", "videos": "video", "video": "video",
          "audio": "audio", "audios": "audio", "meshes": "3d", "3d": "3d"}
_VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif")
_AUDIO_SUFFIXES = (".flac", ".mp3", ".wav", ".ogg", ".opus", ".m4a")


@dataclass(frozen=True)
class OutputFile:
    node_id: str
    filename: str
    subfolder: str
    type: str  # ComfyUI's folder type: "output" (results) or "input"
    kind: str  # image | animated | video | audio | 3d | file

    @property
    def view_params(self) -> dict[str, str]:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}


@dataclass(frozen=True)
class TextOutput:
    node_id: str
    text: str


@dataclass
class PromptOutcome:
    prompt_id: str
    files: list[OutputFile] = field(default_factory=list)
    texts: list[TextOutput] = field(default_factory=list)
    cached_nodes: list[str] = field(default_factory=list)


def _kind(key: str, filename: str, animated: bool) -> str:
    lower = filename.lower()
    if lower.endswith(_VIDEO_SUFFIXES):
        return "video"
    if lower.endswith(_AUDIO_SUFFIXES):
        return "audio"
    if animated:
        return "animated"
    return _KINDS.get(key, "file")


def collect_outputs(prompt_id: str, entry: dict[str, Any]) -> PromptOutcome:
    """Every result file and text of a successful entry; `type: temp` previews are skipped."""
    outcome = PromptOutcome(prompt_id)
    outputs = entry.get("outputs") or {}
    if not isinstance(outputs, dict):
        raise AppError("comfy_protocol_error", "history outputs is not an object")
    for node_id, node_output in outputs.items():
        if not isinstance(node_output, dict):
            continue
        animated_flags = node_output.get("animated") or []
        for key, items in node_output.items():
            if not isinstance(items, list):
                continue
            for index, item in enumerate(items):
                if key == "text" and isinstance(item, str):
                    outcome.texts.append(TextOutput(str(node_id), item))
                elif isinstance(item, dict) and isinstance(item.get("filename"), str):
                    if item.get("type", "output") == "temp":
                        continue  # previews (PreviewImage) are not results
                    animated = bool(animated_flags[index]) if index < len(animated_flags) else False
                    outcome.files.append(OutputFile(
                        node_id=str(node_id), filename=item["filename"],
                        subfolder=str(item.get("subfolder") or ""), type=str(item.get("type") or "output"),
                        kind=_kind(key, item["filename"], animated)))
    for event, data in _messages(entry):
        if event == "execution_cached" and isinstance(data, dict):
            outcome.cached_nodes.extend(str(n) for n in data.get("nodes") or [])
    return outcome


def _messages(entry: dict[str, Any]) -> list[tuple[str, Any]]:
    status = entry.get("status") or {}
    messages = status.get("messages") or []
    return [(m[0], m[1]) for m in messages if isinstance(m, (list, tuple)) and len(m) == 2]


def raise_for_failure(prompt_id: str, entry: dict[str, Any]) -> None:
    """Turn an entry that did not succeed into the matching AppError."""
    status = entry.get("status") or {}
    if status.get("status_str") == "success" and status.get("completed", True):
        return
    for event, data in _messages(entry):
        if event == "execution_error" and isinstance(data, dict):
            raise execution_error(data)
        if event == "execution_interrupted":
            node = data.get("node_type") if isinstance(data, dict) else None
            raise AppError("interrupted", f"prompt {prompt_id} was interrupted"
                           + (f" in {node}" if node else ""), extra={"prompt_id": prompt_id})
    raise AppError("interrupted", f"prompt {prompt_id} did not complete",
                   extra={"prompt_id": prompt_id})


def execution_error(data: dict[str, Any]) -> AppError:
    """Map ComfyUI's `execution_error` payload; the traceback stays in ComfyUI's log."""
    node_type = str(data.get("node_type") or "unknown")
    node_id = str(data.get("node_id") or "")
    message = str(data.get("exception_message") or "").strip()
    exc_type = str(data.get("exception_type") or "")
    extra = {"prompt_id": data.get("prompt_id"), "node_id": node_id, "node_type": node_type,
             "exception_type": exc_type}
    detail = f"node {node_id} ({node_type}): {message.splitlines()[0] if message else exc_type}"
    fault = faults.classify(message, exc_type)
    if fault is None:
        return AppError("execution_error", detail, suffix=node_type, extra=extra)
    return AppError(fault.code, detail, extra={**extra, "fault": fault.name})
