"""Getting a job's workflow into ComfyUI's API format, and making it safe to run beside others.

Sources: an object, a JSON string, a `workflow_url` (fetched with a size cap and a timeout),
or the version spec's default workflow. API-format prompts are taken as they are; a workflow the
editor saved (`{"nodes": [...], "links": [...]}`) becomes a `UiWorkflow`, checked here and
converted once the running ComfyUI's node definitions are known (services/jobs/ui_format.py).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from services import jsonlimits
from services.errors import AppError
from services.jobs import ui_format
from services.jobs.fetch import FetchFailed, fetch_bytes
from services.jobs.file_inputs import JOBS_FOLDER

_PREFIX_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class UiWorkflow:
    """A workflow in the editor's format whose shape `ui_format.check` accepted; what it becomes
    depends on the node definitions of the ComfyUI that runs it, so the runner converts it then."""
    graph: dict[str, Any]

    def to_prompt(self, object_info: dict[str, Any]) -> dict[str, Any]:
        return ui_format.to_prompt(self.graph, object_info)


def parse_workflow(value: Any) -> dict[str, Any] | UiWorkflow:
    if isinstance(value, str):
        try:
            value = jsonlimits.loads(value, "workflow")
        except ValueError as exc:
            raise AppError("invalid_workflow", f"workflow string is not JSON: {exc}", suffix="not_json") from None
    if not isinstance(value, dict):
        raise AppError("invalid_workflow", "a workflow is a JSON object of nodes", suffix="not_object")
    if ui_format.is_ui_format(value):
        ui_format.check(value)
        return UiWorkflow(value)
    if not value:
        raise AppError("invalid_workflow", "the workflow has no nodes", suffix="empty")
    for node_id, node in value.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise AppError("invalid_workflow", f"node {node_id!s:.40} needs a string class_type",
                           suffix="node_shape")
        if not isinstance(node.get("inputs", {}), dict):
            raise AppError("invalid_workflow", f"node {node_id!s:.40} inputs must be an object",
                           suffix="node_shape")
    return value


async def fetch_workflow(url: str, *, max_bytes: int, timeout: float,
                         session: aiohttp.ClientSession | None = None) -> dict[str, Any] | UiWorkflow:
    try:
        body = await fetch_bytes(url, max_bytes=max_bytes, timeout=timeout, session=session)
    except FetchFailed as exc:
        if exc.reason == "invalid_url":
            raise AppError("workflow_url_invalid", "workflow_url must be an http:// or https:// URL") from None
        raise AppError("workflow_url_failed", f"workflow_url: {exc.detail}", suffix=exc.reason) from None
    try:
        parsed = jsonlimits.loads(body, "workflow_url")
    except ValueError:
        raise AppError("workflow_url_failed", "workflow_url did not return JSON", suffix="not_json") from None
    return parse_workflow(parsed)


def isolate_outputs(workflow: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Give every save node a per-job subfolder so concurrent jobs never share a file name.

    The caller's prefix is kept as the file stem, reduced to safe characters: a prefix like
    `../../x` would otherwise let a workflow write outside ComfyUI's output folder.
    """
    prepared = copy.deepcopy(workflow)
    for node in prepared.values():
        inputs = node.get("inputs")
        if isinstance(inputs, dict) and isinstance(inputs.get("filename_prefix"), str):
            stem = inputs["filename_prefix"].replace("\\", "/").rsplit("/", 1)[-1]
            stem = _PREFIX_SAFE.sub("_", stem).strip("._") or "ComfyUI"
            inputs["filename_prefix"] = f"{JOBS_FOLDER}/{job_id}/{stem}"
    return prepared


def rewrite_input_names(workflow: dict[str, Any], renames: dict[str, str]) -> None:
    """Point inputs that name an uploaded image at its per-job location (in place)."""
    if not renames:
        return
    for node in workflow.values():
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            continue
        for key, value in inputs.items():
            if isinstance(value, str) and value in renames:
                inputs[key] = renames[value]
