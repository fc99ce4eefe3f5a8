"""Making an API-format prompt of a workflow saved by ComfyUI's editor ("Save": the UI format).

The editor saves `{"nodes": [...], "links": [...]}`: each node's widget values by position
(`widgets_values`), its connections as link ids, plus nodes that only exist in the editor
(Reroute, PrimitiveNode, notes). ComfyUI runs only the API format. The conversion follows the
editor's own "Export (API)" (ComfyUI_frontend `graphToPrompt` in src/utils/executionUtil.ts and
litegraph's `ExecutableNodeDTO.resolveInput/resolveOutput`):

- widget values are matched by position to the node's widget inputs as the running version's
  `/object_info` lists them (INT, FLOAT, STRING, BOOLEAN, combos; not `forceInput` ones), in
  `input_order`. The editor saves one extra value after each input it gives a
  `control_after_generate` widget (an INT named seed/noise_seed unless object_info says
  otherwise, or any INT/combo marked so) and, in some editor versions, after an upload input
  (`image_upload`, ...): those are skipped, never sent;
- a link becomes `[source_node_id, output_slot]`, followed through Reroutes and bypassed nodes
  (mode 4: the first input of the link's type stands in for the output); a link from a
  PrimitiveNode puts the primitive's value into the input;
- muted nodes (mode 2) are dropped with every input linked to them, as the editor does.

What the version's node definitions cannot make unambiguous is refused with
`invalid_workflow:ui_format`, naming the node, its type and why: a type this ComfyUI does not
have, a widget value count that does not fit the definition, subgraphs and group nodes (their
inner graphs would need the editor's expansion rules, which change between versions).
`check` needs no ComfyUI (runs at submission); `to_prompt` needs `/object_info` (runs once
ComfyUI is up).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.errors import AppError

MUTED, BYPASSED = 2, 4  # litegraph's LGraphEventMode.NEVER and .BYPASS
REROUTE, PRIMITIVE = "Reroute", "PrimitiveNode"
EDITOR_ONLY = {REROUTE, PRIMITIVE, "Note", "MarkdownNote"}  # the editor's virtual nodes
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = ("seed", "noise_seed")
# Values the editor's control widget takes; old editors saved a boolean "randomize" toggle.
CONTROL_MODES = {"fixed", "increment", "decrement", "randomize", "increment-wrap"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")


def is_ui_format(value: dict[str, Any]) -> bool:
    return isinstance(value.get("nodes"), list) and "links" in value


def _refuse(detail: str) -> AppError:
    return AppError("invalid_workflow", detail, suffix="ui_format")


def _name(node: dict[str, Any]) -> str:
    return f"node {node.get('id')!s:.40} ({node.get('type')!s:.60})"


@dataclass(frozen=True)
class _Link:
    origin: Any
    slot: int
    type: Any


@dataclass(frozen=True)
class _Widget:
    name: str
    kind: str
    options: dict[str, Any]
    choices: list | None
    control: bool  # the editor saves a control_after_generate value after it
    upload: bool  # some editors save the upload button's value after it


def check(graph: dict[str, Any]) -> None:
    """The refusals that need no node definitions: shape, subgraphs, group nodes."""
    _nodes_by_id(graph)
    _links(graph)
    definitions = graph.get("definitions")
    subgraphs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
    subgraph_ids = {s.get("id") for s in subgraphs or () if isinstance(s, dict)}
    if all(n["type"] in EDITOR_ONLY or n.get("mode") in (MUTED, BYPASSED) for n in graph["nodes"]):
        raise _refuse("no node is left to run (none, or all are muted, bypassed or editor-only)")
    for node in graph["nodes"]:
        kind = node["type"]
        if kind in subgraph_ids:
            raise _refuse(f"{_name(node)} is a subgraph; subgraphs are not converted: "
                          "export the workflow with 'Export (API)' and send that")
        if kind.startswith(("workflow>", "workflow/")):
            raise _refuse(f"{_name(node)} is a group node; group nodes are not converted: "
                          "export the workflow with 'Export (API)' and send that")


def to_prompt(graph: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The API-format prompt of an editor workflow, for a ComfyUI with this `/object_info`."""
    check(graph)
    return _Converter(graph, object_info).prompt()


def _nodes_by_id(graph: dict[str, Any]) -> dict[str, dict[str, Any]]:
    nodes: dict[str, dict[str, Any]] = {}
    for node in graph["nodes"]:
        if not isinstance(node, dict) or not isinstance(node.get("type"), str) \
                or isinstance(node.get("id"), bool) or not isinstance(node.get("id"), (int, str)):
            raise _refuse("each of the UI workflow's nodes needs an id and a string type")
        if not isinstance(node.get("inputs", []), list) or not isinstance(node.get("outputs", []), list):
            raise _refuse(f"{_name(node)}: inputs and outputs must be lists")
        if str(node["id"]) in nodes:
            raise _refuse(f"{_name(node)}: two nodes have this id")
        nodes[str(node["id"])] = node
    return nodes


def _links(graph: dict[str, Any]) -> dict[Any, _Link]:
    """Link id -> origin; saved as `[id, origin_id, origin_slot, target_id, target_slot, type]`
    (or, in newer files, objects with those names)."""
    links: dict[Any, _Link] = {}
    if not isinstance(graph["links"], list):
        raise _refuse("the UI workflow's links must be a list")
    for link in graph["links"]:
        if isinstance(link, dict):
            link = [link.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")]
        if not isinstance(link, list) or len(link) < 6 or not isinstance(link[2], int):
            raise _refuse(f"link {str(link):.60} is not [id, origin_id, origin_slot, target_id, target_slot, type]")
        links[link[0]] = _Link(link[1], link[2], link[5])
    return links


def _compatible(a: Any, b: Any) -> bool:
    """litegraph's isValidConnection: `*`/empty match anything, `A,B` lists match any member."""
    if a in ("", "*", None) or b in ("", "*", None) or a == b:
        return True
    left, right = str(a).lower().split(","), str(b).lower().split(",")
    return bool(set(left) & set(right))


class _Muted:
    """A link whose source is a muted node: the editor drops the input."""


class _Converter:
    def __init__(self, graph: dict[str, Any], object_info: dict[str, Any]):
        self.nodes = _nodes_by_id(graph)
        self.links = _links(graph)
        self.info = object_info

    def prompt(self) -> dict[str, Any]:
        prompt: dict[str, Any] = {}
        for node_id, node in self.nodes.items():
            if node["type"] in EDITOR_ONLY or node.get("mode") in (MUTED, BYPASSED):
                continue
            info = self.info.get(node["type"])
            if not isinstance(info, dict):
                raise _refuse(f"{_name(node)}: this ComfyUI has no node of that type "
                              "(a custom node that is not installed?)")
            inputs = {name: _boxed(value) for name, value in self._widget_values(node, info).items()}
            for index, slot in enumerate(node.get("inputs", [])):
                if not isinstance(slot, dict) or not isinstance(slot.get("name"), str):
                    raise _refuse(f"{_name(node)}: input {index} has no name")
                if slot.get("link") is None:
                    continue
                source = self._resolve_link(slot["link"], slot.get("type"), set())
                if source is None:
                    continue  # nothing behind the link (an empty Reroute, a bypass without a match)
                if isinstance(source, _Muted):
                    inputs.pop(slot["name"], None)
                elif isinstance(source, list):
                    inputs[slot["name"]] = source
                else:
                    inputs[slot["name"]] = _boxed(source[0])
            prompt[node_id] = {"inputs": inputs, "class_type": node["type"],
                               "_meta": {"title": node.get("title") or info.get("display_name") or node["type"]}}
        return prompt

    # ---- widget values -------------------------------------------------------------
    def _widget_values(self, node: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        widgets = _widgets(info)
        saved = node.get("widgets_values")
        if saved is None:
            return {w.name: self._default(node, w) for w in widgets}
        if isinstance(saved, dict):  # some custom nodes save their values by name
            missing = [w.name for w in widgets if w.name not in saved]
            if missing:
                raise _refuse(f"{_name(node)}: widgets_values has no {', '.join(missing)}")
            return {w.name: saved[w.name] for w in widgets}
        if not isinstance(saved, list):
            raise _refuse(f"{_name(node)}: widgets_values must be a list")
        base = len(widgets) + sum(w.control for w in widgets)
        uploads = sum(w.upload for w in widgets)
        if len(saved) not in (base, base + uploads):
            expected = str(base) if not uploads else f"{base} or {base + uploads}"
            names = ", ".join(f"{w.name}{' + control_after_generate' if w.control else ''}" for w in widgets)
            raise _refuse(f"{_name(node)}: {len(saved)} widget values, but this ComfyUI's "
                          f"{node['type']!s:.60} has {expected} ({names or 'no widgets'})")
        with_upload = len(saved) != base
        values: dict[str, Any] = {}
        position = iter(saved)
        for widget in widgets:
            values[widget.name] = next(position)
            if widget.control:
                mode = next(position)
                if not isinstance(mode, bool) and mode not in CONTROL_MODES:
                    raise _refuse(f"{_name(node)}: the value after {widget.name} is {mode!r:.40}, "
                                  "not a control_after_generate mode: the widget values do not line up "
                                  "with this ComfyUI's definition of the node")
            if widget.upload and with_upload:
                next(position)
        return values

    @staticmethod
    def _default(node: dict[str, Any], widget: _Widget) -> Any:
        """A node saved without widgets_values shows its definition's defaults in the editor."""
        if "default" in widget.options:
            return widget.options["default"]
        if widget.choices:
            return widget.choices[0]
        raise _refuse(f"{_name(node)}: no widgets_values, and {widget.name} has no default")

    # ---- links -----------------------------------------------------------------------
    def _resolve_link(self, link_id: Any, want: Any, seen: set) -> list | tuple | _Muted | None:
        """What an input linked by `link_id` receives: `[node_id, slot]`, `(value,)` from a
        PrimitiveNode, `_Muted`, or None (nothing)."""
        link = self.links.get(link_id)
        if link is None:
            raise _refuse(f"link {link_id!s:.20} is used by a node but not listed in links")
        origin = self.nodes.get(str(link.origin))
        if origin is None:
            raise _refuse(f"link {link_id!s:.20} starts at node {link.origin!s:.40}, which is not in the workflow")
        return self._resolve_output(origin, link.slot, want, seen)

    def _resolve_output(self, node: dict[str, Any], slot: int, want: Any, seen: set):
        key = (str(node["id"]), slot)
        if key in seen:
            raise _refuse(f"{_name(node)}: links loop through this node's output {slot}")
        seen.add(key)
        if node.get("mode") == BYPASSED:
            index = _bypass_input(node, slot, want)
            return None if index is None else self._resolve_input(node, index, None, seen)
        if node["type"] == PRIMITIVE:
            values = node.get("widgets_values")
            if not isinstance(values, list) or not values:
                raise _refuse(f"{_name(node)}: the primitive has no value")
            return (values[0],)
        if node["type"] == REROUTE:
            return self._resolve_input(node, slot, want, seen)
        if node["type"] in EDITOR_ONLY:
            return None
        if node.get("mode") == MUTED:
            return _Muted()
        return [str(node["id"]), slot]

    def _resolve_input(self, node: dict[str, Any], index: int, want: Any, seen: set):
        inputs = node.get("inputs", [])
        if index >= len(inputs) or not isinstance(inputs[index], dict) or inputs[index].get("link") is None:
            return None
        return self._resolve_link(inputs[index]["link"], want or inputs[index].get("type"), seen)


def _bypass_input(node: dict[str, Any], slot: int, want: Any) -> int | None:
    """The input that stands in for output `slot` of a bypassed node (litegraph's
    `#getBypassSlotIndex`): the same slot if its type fits, else the first input of the wanted
    type, else the first compatible one."""
    inputs = [i.get("type") if isinstance(i, dict) else None for i in node.get("inputs", [])]
    outputs = node.get("outputs", [])
    if slot >= len(outputs) or not isinstance(outputs[slot], dict):
        raise _refuse(f"{_name(node)}: a link starts at output {slot}, which the node does not have")
    if not inputs:
        return None
    if want in ("*", "", None):
        return slot if slot < len(inputs) else 0
    out_type = outputs[slot].get("type")
    if slot < len(inputs) and _compatible(inputs[slot], out_type) and _compatible(inputs[slot], want):
        return slot
    if want in inputs:
        return inputs.index(want)
    return next((i for i, t in enumerate(inputs) if _compatible(t, out_type) and _compatible(t, want)), None)


def _widgets(info: dict[str, Any]) -> list[_Widget]:
    """The node's widget inputs, in the order the editor draws (and saves) them."""
    declared = info.get("input") if isinstance(info.get("input"), dict) else {}
    order = info.get("input_order") if isinstance(info.get("input_order"), dict) else {}
    widgets = []
    for category in ("required", "optional"):
        specs = declared.get(category) or {}
        for name in order.get(category) or list(specs):
            spec = specs.get(name)
            if not isinstance(spec, (list, tuple)) or not spec:
                continue
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            choices = spec[0] if isinstance(spec[0], list) else options.get("options")
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            if kind not in WIDGET_TYPES or options.get("forceInput"):
                continue
            control = options.get("control_after_generate")
            if kind == "INT" and control is None:
                control = name in SEED_NAMES  # the editor's rule (useIntWidget.ts)
            widgets.append(_Widget(name, kind, options, choices if isinstance(choices, list) else None,
                                   kind in ("INT", "COMBO") and bool(control),
                                   any(options.get(o) for o in UPLOAD_OPTIONS)))
    return widgets


def _boxed(value: Any) -> Any:
    """A list value would read as a link; the editor sends it as `{"__value__": [...]}`,
    which ComfyUI unwraps."""
    return {"__value__": value} if isinstance(value, list) else value
