"""All node classes the stand-in knows, by the `class_type` a prompt uses."""

from __future__ import annotations

from . import image_nodes, model_nodes, standin_nodes
from .nodes import Node

NODE_TYPES: dict[str, type[Node]] = {
    node.name: node for node in (*image_nodes.NODES, *model_nodes.NODES, *standin_nodes.NODES)
}
