"""Limits on decoded JSON, shared by the Pod API's bodies and job payloads (serverless included).

Python's json module accepts what JSON does not (NaN, Infinity; `1e400` becomes inf) and
recurses once per nesting level (RecursionError near 1000 levels). Either used to end as a
500 somewhere later (`float()` overflow, a recursive json.dumps). Here a payload is refused
up front: nesting deeper than MAX_DEPTH is `json_too_deep`, a non-finite number is
`invalid_payload:<top-level field>`.
"""
from __future__ import annotations

import json
import math
from typing import Any

from services.errors import AppError

# API-format workflows nest about 4 levels (prompt > node > inputs > link list); 64 leaves
# room for any custom node's structured input and stays far below Python's recursion limit.
MAX_DEPTH = 64


def loads(raw: bytes | str, field: str | None = None) -> Any:
    """json.loads, then `check`; ValueError (not JSON) is the caller's to map. `field`: the
    payload field the text came from (a workflow sent as a string)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    check(value, field)
    return value


def check(value: Any, field: str | None = None) -> None:
    """Walk a decoded value without recursion: depth and finite numbers. Errors name the
    top-level field the problem sits in (or `field`)."""
    stack: list[tuple[Any, int, str | None]] = [(value, 1, field)]
    while stack:
        item, depth, field = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise AppError("invalid_payload", f"{field or 'the body'} holds a number JSON cannot carry "
                           "(NaN, Infinity or beyond a double's range)", suffix=field or "body")
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise _too_deep()
            if isinstance(item, dict):
                stack.extend((v, depth + 1, field if field is not None else _printable(k)) for k, v in item.items())
            else:
                stack.extend((v, depth + 1, field) for v in item)


def _printable(key: Any) -> str:
    # The field name becomes part of an error code: no control characters, bounded.
    return "".join(c for c in str(key)[:64] if c.isprintable()) or "?"


def _too_deep() -> AppError:
    return AppError("json_too_deep", f"JSON nests deeper than {MAX_DEPTH} levels")
