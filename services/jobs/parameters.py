"""Named parameters and per-node overrides: changing a workflow without sending a new one.

A version spec may declare `parameters` over its default workflow (name -> the node and input
it sets, a type, a default, bounds or choices). A job sends `params: {name: value}`; each
value is checked against its declaration and written into a copy of the default workflow.
Parameters are declared over the default workflow only, so `params` beside a job's own
`workflow`/`workflow_url` is refused (`params_conflict`): the same node id may mean another
node there.

`overrides: {node_id: {input: value}}` works on any workflow, the job's own included. Without
ComfyUI's /object_info (the runner has it only later, and a refusal should not need ComfyUI)
an override may only replace a literal input the node already has in the prompt: it cannot add
an input, nor cut a link (`["4", 0]`) by replacing it with a literal.

Declarations are checked when the spec is loaded (services/versions/spec.py), job values when
the payload is validated, so a bad value is a 400 before anything is stored or run.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from services.errors import AppError

TYPES = ("int", "float", "string", "boolean", "enum")
# ComfyUI's INT inputs are 64-bit (seeds reach 0xffffffffffffffff); a 400-digit integer is a
# mistake to refuse here, not a number to hand on.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


@dataclass(frozen=True)
class Parameter:
    name: str
    node: str
    input: str
    type: str
    default: Any
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] = ()
    description: str = ""

    def public(self) -> dict[str, Any]:
        """What a client is told (GET /versions/{id}); only what the spec declares."""
        shown = {"type": self.type, "default": self.default, "node": self.node, "input": self.input,
                 "description": self.description}
        if self.min is not None:
            shown["min"] = self.min
        if self.max is not None:
            shown["max"] = self.max
        if self.choices:
            shown["choices"] = list(self.choices)
        return shown


def _shown(text: Any) -> str:
    # Names from a payload become part of an error code: printable and bounded.
    return "".join(c for c in str(text)[:64] if c.isprintable()) or "?"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python


def _is_number(value: Any) -> bool:
    """A finite number, 64-bit when whole (math.isfinite raises on a 400-digit integer)."""
    if _is_int(value):
        return INT_MIN <= value <= INT_MAX
    return isinstance(value, float) and math.isfinite(value)


def is_scalar(value: Any) -> bool:
    """A literal input value: a string, true/false or a number as `_is_number`."""
    return isinstance(value, (str, bool)) or _is_number(value)


def check_value(param: Parameter, value: Any) -> Any:
    """The value to write for `param`, or `invalid_param:<name>` saying what it must be."""
    def bad(detail: str) -> AppError:
        return AppError("invalid_param", f"{param.name}: {detail}", suffix=param.name)

    if param.type == "int":
        if not (_is_int(value) and _is_number(value)):
            raise bad("must be a whole number (64-bit)")
    elif param.type == "float":
        if not _is_number(value):
            raise bad("must be a finite number")
    elif param.type == "string":
        if not isinstance(value, str):
            raise bad("must be a string")
    elif param.type == "boolean":
        if not isinstance(value, bool):
            raise bad("must be true or false")
    else:  # enum: the declared choice is written (1 and 1.0 are the same choice; true is not 1)
        for choice in param.choices:
            if type(choice) is type(value) or (_is_number(choice) and _is_number(value)):
                if choice == value:
                    return choice
        raise bad(f"must be one of {', '.join(map(repr, param.choices))}")
    if param.min is not None and value < param.min:
        raise bad(f"must be at least {param.min}")
    if param.max is not None and value > param.max:
        raise bad(f"must be at most {param.max}")
    return value


def declare(raw: Mapping[str, Any], workflow: dict[str, Any] | None,
            invalid: Callable[[str, str], Exception]) -> tuple[dict[str, Parameter], dict[str, Any] | None]:
    """A spec's `parameters` (already schema-valid) checked against its default workflow.

    Returns them and the default workflow with each declared default written in (a default
    left out is the workflow's own value). `invalid(where, detail)` builds the spec's error.
    """
    if not raw:
        return {}, workflow
    if workflow is None:
        raise invalid("/parameters", "parameters are declared over the default workflow; the spec has none")
    workflow = copy.deepcopy(workflow)
    declared: dict[str, Parameter] = {}
    targets: dict[tuple[str, str], str] = {}
    for name, item in raw.items():
        where = f"/parameters/{name}"
        node = workflow.get(item["node"])
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            raise invalid(f"{where}/node", f"the default workflow has no node {item['node']!r} with inputs")
        if item["input"] not in inputs:
            raise invalid(f"{where}/input", f"node {item['node']} has no input {item['input']!r} in the default workflow")
        if not is_scalar(inputs[item["input"]]):
            raise invalid(f"{where}/input", f"input {item['input']!r} of node {item['node']} is a link, not a literal value")
        target = (item["node"], item["input"])
        if target in targets:
            raise invalid(f"{where}/input", f"parameter {targets[target]!r} already sets this input")
        targets[target] = name
        bounds = [item.get(b) for b in ("min", "max")]
        if any(b is not None and not _is_number(b) for b in bounds):
            raise invalid(where, "min and max must be finite numbers")
        if None not in bounds and bounds[0] > bounds[1]:
            raise invalid(f"{where}/min", "min is above max")
        param = Parameter(name, item["node"], item["input"], item["type"], None, bounds[0], bounds[1],
                          tuple(item.get("choices", ())), item.get("description", ""))
        try:
            default = check_value(param, item.get("default", inputs[item["input"]]))
        except AppError as exc:
            raise invalid(f"{where}/default" if "default" in item else f"{where}/input",
                          f"the default does not fit: {exc.detail}") from None
        inputs[item["input"]] = default
        declared[name] = replace(param, default=default)
    return declared, workflow


def parse_params(value: Any) -> dict[str, Any]:
    """The payload's `params`: an object of names; values are checked against the spec later."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AppError("invalid_payload", "params must be an object of {name: value}", suffix="params")
    return value


def parse_overrides(value: Any) -> dict[str, dict[str, Any]]:
    """The payload's `overrides`: {node_id: {input: literal}}; whether the node and input exist
    is checked against the workflow (`customize`)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AppError("invalid_payload", "overrides must be an object of {node_id: {input: value}}", suffix="overrides")
    for node_id, inputs in value.items():
        if not isinstance(inputs, dict) or not inputs:
            raise AppError("invalid_override", f"overrides of node {_shown(node_id)} must be a non-empty object "
                           "of {input: value}", suffix=_shown(node_id))
        for name, literal in inputs.items():
            if not is_scalar(literal):
                raise AppError("invalid_override", "an override is a string, a finite number or true/false "
                               "(no lists: links are not overridden; no null)", suffix=f"{_shown(node_id)}:{_shown(name)}")
    return value


def customize(workflow: dict[str, Any], params: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]],
              declared: Mapping[str, Parameter], version_id: str) -> dict[str, Any]:
    """A copy of `workflow` with the job's `params` (declared over it) and `overrides` written in;
    `workflow` itself (a cached spec's default) is never changed."""
    if not params and not overrides:
        return workflow
    result = copy.deepcopy(workflow)
    set_by: dict[tuple[str, str], str] = {}
    for name, value in params.items():
        param = declared.get(name)
        if param is None:
            known = ", ".join(sorted(declared)) or "none"
            raise AppError("unknown_param", f"version {version_id} has no parameter {_shown(name)!r}; "
                           f"its parameters: {known}", suffix=_shown(name))
        result[param.node]["inputs"][param.input] = check_value(param, value)
        set_by[(param.node, param.input)] = name
    for node_id, inputs in overrides.items():
        node = result.get(node_id)
        if not isinstance(node, dict):
            raise AppError("invalid_override", f"the workflow has no node {_shown(node_id)}", suffix=_shown(node_id))
        current = node.get("inputs") or {}
        for name, value in inputs.items():
            where = f"{_shown(node_id)}:{_shown(name)}"
            if name not in current:
                literals = ", ".join(sorted(k for k, v in current.items() if is_scalar(v))) or "none"
                raise AppError("invalid_override", f"node {_shown(node_id)} has no input {_shown(name)!r} in the "
                               f"prompt; its literal inputs: {literals}", suffix=where)
            if not is_scalar(current[name]):
                raise AppError("invalid_override", f"input {_shown(name)!r} of node {_shown(node_id)} is a link; "
                               "only literal inputs are overridden", suffix=where)
            if (node_id, name) in set_by:
                raise AppError("invalid_override", f"parameter {set_by[(node_id, name)]!r} sets this input too; "
                               "send one of them", suffix=where)
            current[name] = value
    return result
