"""ComfyUI's `/prompt` validation, with its error types, messages and quirks.

Clients show these errors to users and branch on their `type`, so the shapes follow the
recordings in `tests/fixtures/comfy/err_*.json` exactly, including ComfyUI's quirks:
- an output node whose own inputs are fine but whose upstream node failed is invalid
  without errors of its own, so it is absent from `node_errors` and adds nothing to the
  top-level `details`;
- a link to a missing node raises KeyError inside validation and is reported as
  `exception_during_validation` (or `exception_during_inner_validation` one level down);
- literal values are converted in place (`"64"` becomes 64 for an INT), so the queued and
  stored prompt holds the converted values.
Inputs are checked in declaration order; ComfyUI iterates a set, so its order may vary.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

from .files import Paths
from .nodes import Node

CONVERTERS = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
# Longer combo lists (e.g. many model files) are not echoed back in errors.
MAX_LISTED_OPTIONS = 20


@dataclass
class Outcome:
    ok: bool
    error: dict | None = None
    outputs: list[str] = field(default_factory=list)
    node_errors: dict[str, dict] = field(default_factory=dict)


def prompt_error(kind: str, message: str, details: str = "") -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def _reason(kind: str, message: str, details: str, extra_info: dict) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info}


def full_type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def validate_prompt(prompt: dict, node_types: dict[str, type[Node]], paths: Paths,
                    partial_targets: list[str] | None = None) -> Outcome:
    outputs = []
    for node_id in prompt:
        if "class_type" not in prompt[node_id]:
            return Outcome(False, prompt_error(
                "invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                f"Node ID '#{node_id}'"))
        class_type = prompt[node_id]["class_type"]
        node = node_types.get(class_type)
        if node is None:
            return Outcome(False, prompt_error(
                "invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                f"Node ID '#{node_id}'"))
        if node.output_node and (partial_targets is None or node_id in partial_targets):
            outputs.append(node_id)
    if not outputs:
        return Outcome(False, prompt_error("prompt_no_outputs", "Prompt has no outputs"))

    checker = _NodeChecker(prompt, node_types, paths)
    good, failed_reasons, node_errors = [], [], {}
    for output_id in outputs:
        try:
            ok, reasons = checker.check(output_id)
        except Exception as exc:
            ok, reasons = False, [_reason(
                "exception_during_validation", "Exception when validating node", str(exc),
                {"exception_type": full_type_name(exc), "traceback": traceback.format_tb(exc.__traceback__)})]
            checker.results[output_id] = (ok, reasons)
        if ok:
            good.append(output_id)
            continue
        failed_reasons.append(reasons)
        # Every failing node seen so far is charged to this output, as ComfyUI does.
        for node_id, (node_ok, node_reasons) in checker.results.items():
            if not node_ok and node_reasons:
                entry = node_errors.setdefault(node_id, {
                    "errors": node_reasons, "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"]})
                entry["dependent_outputs"].append(output_id)

    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for reasons in failed_reasons for r in reasons)
        return Outcome(False, prompt_error("prompt_outputs_failed_validation",
                                           "Prompt outputs failed validation", details),
                       node_errors=node_errors)
    return Outcome(True, outputs=good, node_errors=node_errors)


class _NodeChecker:
    """Validates one node and, recursively, the nodes it links to (each once)."""

    def __init__(self, prompt: dict, node_types: dict[str, type[Node]], paths: Paths):
        self.prompt = prompt
        self.node_types = node_types
        self.paths = paths
        self.results: dict[str, tuple[bool, list[dict]]] = {}

    def check(self, node_id: str) -> tuple[bool, list[dict]]:
        if node_id in self.results:
            return self.results[node_id]
        inputs = self.prompt[node_id]["inputs"]
        node = self.node_types[self.prompt[node_id]["class_type"]]
        errors: list[dict] = []
        upstream_ok = True
        for category, specs in node.input_types(self.paths).items():
            if category == "hidden":
                continue
            for name, spec in specs.items():
                config = [spec[0], spec[1] if len(spec) > 1 else {}]
                if name not in inputs:
                    if category == "required":
                        errors.append(_reason("required_input_missing", "Required input is missing",
                                              name, {"input_name": name}))
                elif isinstance(inputs[name], list):
                    error, linked_ok = self._check_link(name, inputs[name], config)
                    errors += [error] if error else []
                    upstream_ok = upstream_ok and linked_ok
                else:
                    error = self._check_value(node, inputs, name, config)
                    errors += [error] if error else []
        errors += self._check_custom(node, inputs)
        result = (not errors and upstream_ok, errors)
        self.results[node_id] = result
        return result

    def _check_link(self, name: str, link: list, config: list) -> tuple[dict | None, bool]:
        if len(link) != 2:
            return _reason("bad_linked_input",
                           "Bad linked input, must be a length-2 list of [node_id, slot_index]", name,
                           {"input_name": name, "input_config": config, "received_value": link}), True
        linked_id, slot = link
        received_type = self.node_types[self.prompt[linked_id]["class_type"]].outputs[slot]
        if not types_match(received_type, config[0]):
            return _reason("return_type_mismatch", "Return type mismatch between linked nodes",
                           f"{name}, received_type({received_type}) mismatch input_type({config[0]})",
                           {"input_name": name, "input_config": config, "received_type": received_type,
                            "linked_node": link}), True
        try:
            linked_ok, _ = self.check(linked_id)
        except Exception as exc:
            self.results[linked_id] = (False, [_reason(
                "exception_during_inner_validation", "Exception when validating inner node", str(exc),
                {"input_name": name, "input_config": config, "exception_message": str(exc),
                 "exception_type": full_type_name(exc),
                 "traceback": traceback.format_tb(exc.__traceback__), "linked_node": link})])
            return None, False
        return None, linked_ok

    def _check_value(self, node: type[Node], inputs: dict, name: str, config: list) -> dict | None:
        kind, options = config
        value = inputs[name]
        # The frontend wraps list-valued widgets as {"__value__": [...]} so they don't read as links.
        if isinstance(value, dict) and "__value__" in value:
            value = inputs[name] = value["__value__"]
        if isinstance(kind, str) and kind in CONVERTERS:
            try:
                value = inputs[name] = CONVERTERS[kind](value)
            except Exception as exc:
                return _reason("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                               f"{name}, {value}, {exc}",
                               {"input_name": name, "input_config": config, "received_value": value,
                                "exception_message": str(exc)})
        if name in node.custom_validated:
            return None
        extra = {"input_name": name, "input_config": config, "received_value": value}
        if "min" in options and value < options["min"]:
            return _reason("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}",
                           name, extra)
        if "max" in options and value > options["max"]:
            return _reason("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}",
                           name, extra)
        if isinstance(kind, list) and value not in kind:
            listed = str(kind)
            if len(kind) > MAX_LISTED_OPTIONS:
                listed, extra["input_config"] = f"(list of length {len(kind)})", None
            return _reason("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}", extra)
        return None

    def _check_custom(self, node: type[Node], inputs: dict) -> list[dict]:
        values = {name: inputs[name] for name in node.custom_validated if name in inputs}
        if len(values) != len(node.custom_validated):
            return []
        verdict = node.validate(self.paths, **values)
        if verdict is True:
            return []
        suffix = "" if verdict is False else f" - {verdict}"
        return [_reason("custom_validation_failed", "Custom validation failed for node", f"{name}{suffix}",
                        {"input_name": name}) for name in values]


def types_match(received: Any, expected: Any) -> bool:
    """ComfyUI's link type rule: equal, `*` on either side, or overlapping comma lists."""
    if received == expected or "*" in (received, expected):
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})
