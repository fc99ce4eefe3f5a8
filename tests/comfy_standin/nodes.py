"""What every stand-in node is: its `/object_info` description and how it runs.

A node class describes its inputs the way `/object_info` shows them
(`{"required": {name: [TYPE, {options}]}, "optional": ..., "hidden": ...}`), its output
types, and a `run()` that gets the resolved inputs as keyword arguments. The executor
creates the instances; validation and the cache only use the class methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from .files import Paths

# Upper bound ComfyUI uses for image sizes.
MAX_RESOLUTION = 16384
# Hidden inputs that output nodes declare to embed the workflow in their files.
HIDDEN_PROMPT_INFO = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


class Interrupted(Exception):
    """Raised inside a run when `/interrupt` asked to stop (ComfyUI checks between steps)."""


@dataclass
class NodeResult:
    outputs: tuple = ()
    # What the node shows in the UI, e.g. {"images": [...]}; sent in `executed` and kept in history.
    ui: dict[str, list] = field(default_factory=dict)


@dataclass
class RunContext:
    """What a running node may use besides its inputs."""

    paths: Paths
    disable_metadata: bool
    check_interrupt: Callable[[], None]
    progress: Callable[[int, int], None]
    # Like time.sleep, but returns as soon as an interrupt is requested.
    sleep: Callable[[float], None]
    # Blocks until every websocket message emitted so far has been handed to the sockets.
    flush_messages: Callable[[], None]


class Node:
    name: ClassVar[str]
    # None: /object_info shows the class name, as ComfyUI does for nodes without a display name.
    display_name: ClassVar[str | None] = None
    category: ClassVar[str] = "image"
    description: ClassVar[str] = ""
    python_module: ClassVar[str] = "nodes"
    outputs: ClassVar[tuple[str, ...]] = ()
    output_names: ClassVar[tuple[str, ...] | None] = None
    output_tooltips: ClassVar[tuple[str, ...] | None] = None
    output_node: ClassVar[bool] = False
    # Inputs checked by validate() instead of the generic min/max/list checks.
    custom_validated: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def input_types(cls, paths: Paths) -> dict[str, dict[str, list]]:
        raise NotImplementedError

    @classmethod
    def validate(cls, paths: Paths, **values: Any) -> bool | str:
        """True, or a reason why the `custom_validated` inputs are unusable."""
        return True

    @classmethod
    def fingerprint(cls, paths: Paths, **inputs: Any) -> Any:
        """Extra cache-key part, like ComfyUI's IS_CHANGED: a new value forces a re-run."""
        return None

    def run(self, ctx: RunContext, **inputs: Any) -> NodeResult:
        raise NotImplementedError


def object_info(node: type[Node], paths: Paths) -> dict[str, Any]:
    """The `/object_info/{class}` entry of a node, with ComfyUI's keys in its order."""
    inputs = node.input_types(paths)
    info = {
        "input": inputs,
        "input_order": {category: list(specs) for category, specs in inputs.items()},
        "output": list(node.outputs),
        "output_is_list": [False] * len(node.outputs),
        "output_name": list(node.output_names or node.outputs),
        "name": node.name,
        "display_name": node.display_name or node.name,
        "description": node.description,
        "python_module": node.python_module,
        "category": node.category,
        "output_node": node.output_node,
    }
    if node.output_tooltips is not None:
        info["output_tooltips"] = list(node.output_tooltips)
    return info
