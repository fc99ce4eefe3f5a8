"""ComfyUI's default ("classic") output cache.

A node's outputs are stored under its input signature: class, literal inputs, its
fingerprint (IS_CHANGED) and, recursively, the signatures of the nodes it links to. Node
ids are not part of it, so the same graph under other ids is served from the cache too.
Only entries the current prompt could use survive the start of a prompt, so in effect the
cache holds what the previous prompt computed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable, Hashable


@dataclass(frozen=True)
class CacheEntry:
    outputs: tuple
    # The node's UI output ({"images": [...]}) and the history "meta" for it; empty if none.
    ui: dict
    meta: dict


class OutputCache:
    def __init__(self) -> None:
        self._entries: dict[Hashable, CacheEntry] = {}
        self._keys: dict[str, Hashable] = {}

    def set_prompt(self, prompt: dict, fingerprint: Callable[[str], Any]) -> None:
        """Key every node of `prompt` and drop entries no node of it can use."""
        signatures: dict[str, Hashable] = {}

        def signature(node_id: str) -> Hashable:
            if node_id not in signatures:
                node = prompt[node_id]
                parts = [node["class_type"], fingerprint(node_id)]
                for name in sorted(node["inputs"]):
                    value = node["inputs"][name]
                    if isinstance(value, list) and len(value) == 2:
                        parts.append((name, "link", signature(value[0]), value[1]))
                    else:
                        parts.append((name, _hashable(value)))
                signatures[node_id] = tuple(parts)
            return signatures[node_id]

        self._keys = {}
        for node_id in prompt:
            try:
                self._keys[node_id] = signature(node_id)
            except Exception:
                # Broken nodes outside the validated outputs (bad links, cycles) never hit.
                self._keys[node_id] = uuid.uuid4().hex
        live = set(self._keys.values())
        self._entries = {key: entry for key, entry in self._entries.items() if key in live}

    def get(self, node_id: str) -> CacheEntry | None:
        return self._entries.get(self._keys.get(node_id))

    def set(self, node_id: str, entry: CacheEntry) -> None:
        self._entries[self._keys[node_id]] = entry

    def clear(self) -> None:
        self._entries.clear()


def _hashable(value: Any) -> Hashable:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value
