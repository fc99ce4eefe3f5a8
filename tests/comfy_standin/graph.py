"""The order in which a prompt's nodes run, picked the way ComfyUI picks it.

Clients see this order in `executing` events (the interrupted recording runs 4, 5, 7, 6, 3),
so it follows ComfyUI's rules: nodes are discovered depth-first from each output, cached
nodes are skipped, and among the nodes whose inputs are ready an output node goes first,
then a node feeding an output, then one two links away, else the first one discovered.
"""

from __future__ import annotations

from typing import Callable


class ExecutionOrder:
    def __init__(self, prompt: dict, is_output: Callable[[str], bool], is_cached: Callable[[str], bool]):
        self._prompt = prompt
        self._is_output = is_output
        self._is_cached = is_cached
        self._pending: dict[str, None] = {}  # insertion-ordered set
        self._waiting_on: dict[str, int] = {}
        self._blocks: dict[str, dict[str, None]] = {}

    def add(self, node_id: str) -> None:
        """Schedule `node_id` and every uncached node it needs."""
        stack, links = [node_id], []
        while stack:
            current = stack.pop()
            if current in self._pending:
                continue
            self._pending[current] = None
            self._waiting_on[current] = 0
            self._blocks[current] = {}
            for value in self._prompt[current]["inputs"].values():
                if isinstance(value, list) and len(value) == 2:
                    if not self._is_cached(value[0]):
                        stack.append(value[0])
                    links.append((value[0], current))
        for source, target in links:
            if not self._is_cached(source):
                self.add(source)
                if target not in self._blocks[source]:
                    self._blocks[source][target] = None
                    self._waiting_on[target] += 1

    def __bool__(self) -> bool:
        return bool(self._pending)

    def next(self) -> str:
        ready = [n for n in self._pending if self._waiting_on[n] == 0]
        if not ready:
            raise RuntimeError(f"Dependency cycle among nodes {list(self._pending)}")
        for depth in range(3):
            for node_id in ready:
                if any(self._is_output(n) for n in self._reachable(node_id, depth)):
                    return node_id
        return ready[0]

    def done(self, node_id: str) -> None:
        del self._pending[node_id]
        for target in self._blocks.pop(node_id):
            self._waiting_on[target] -= 1

    def _reachable(self, node_id: str, depth: int) -> list[str]:
        """Nodes exactly `depth` links downstream of `node_id` (depth 0: the node itself)."""
        level = [node_id]
        for _ in range(depth):
            level = [target for n in level for target in self._blocks.get(n, {})]
        return level
