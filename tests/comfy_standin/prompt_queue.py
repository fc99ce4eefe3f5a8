"""Pending prompts, the running one, finished history and `/free` flags, shared by threads.

HTTP handlers put and inspect; the worker thread takes and finishes. Every change calls
`on_change` while the lock is held, so the `status` broadcasts it triggers go out in the
order the changes happened.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import threading
from dataclasses import dataclass
from typing import Any, Callable

MAX_HISTORY = 10000


@dataclass(frozen=True)
class QueueItem:
    number: int | float
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs: list[str]
    # Credentials taken out of extra_data so that /queue and /history never show them.
    sensitive: dict

    def public(self) -> list:
        """The `[number, prompt_id, prompt, extra_data, outputs]` form of /queue and /history."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class PromptQueue:
    def __init__(self, on_change: Callable[[], None]):
        self._on_change = on_change
        self._lock = threading.RLock()
        self._wakeup = threading.Condition(self._lock)
        # Heap of (number, prompt_id, tie-breaker, item): lowest number runs first.
        self._pending: list[tuple] = []
        self._tiebreak = itertools.count()
        self._running: dict[int, QueueItem] = {}
        self._task_ids = itertools.count()
        self._history: dict[str, dict] = {}
        self._flags: dict[str, Any] = {}

    def put(self, item: QueueItem) -> None:
        with self._lock:
            heapq.heappush(self._pending, (item.number, item.prompt_id, next(self._tiebreak), item))
            self._on_change()
            self._wakeup.notify()

    def get(self) -> tuple[int, QueueItem] | None:
        """Block until a prompt can run (returned with its task id) or a flag was set (None)."""
        with self._lock:
            while not self._pending and not self._flags:
                self._wakeup.wait()
            if not self._pending:
                return None
            item = heapq.heappop(self._pending)[-1]
            task_id = next(self._task_ids)
            self._running[task_id] = copy.deepcopy(item)
            self._on_change()
            return task_id, item

    def task_done(self, task_id: int, entry: dict) -> None:
        """Record the finished run: `entry` holds history's outputs, status and meta."""
        with self._lock:
            item = self._running.pop(task_id)
            while len(self._history) >= MAX_HISTORY:
                self._history.pop(next(iter(self._history)))
            self._history[item.prompt_id] = {"prompt": item.public(), "outputs": {}, **entry}
            self._on_change()

    def remaining(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._running)

    def running(self) -> list[list]:
        with self._lock:
            return [item.public() for item in self._running.values()]

    def pending(self) -> list[list]:
        """Pending prompts in heap order, which is what ComfyUI's /queue shows."""
        with self._lock:
            return [entry[-1].public() for entry in self._pending]

    def is_running(self, prompt_id: str) -> bool:
        with self._lock:
            return any(item.prompt_id == prompt_id for item in self._running.values())

    def clear_pending(self) -> None:
        with self._lock:
            self._pending.clear()
            self._on_change()

    def delete_pending(self, prompt_id: str) -> None:
        with self._lock:
            for index, entry in enumerate(self._pending):
                if entry[-1].prompt_id == prompt_id:
                    self._pending.pop(index)
                    heapq.heapify(self._pending)
                    self._on_change()
                    return

    def history(self, max_items: int | None = None, offset: int = -1) -> dict[str, dict]:
        """Oldest first; with max_items and no offset, the newest max_items entries."""
        with self._lock:
            if offset < 0 and max_items is not None:
                offset = len(self._history) - max_items
            selected = itertools.islice(self._history.items(), max(offset, 0), None)
            if max_items is not None:
                selected = itertools.islice(selected, max_items)
            return dict(selected)

    def history_entry(self, prompt_id: str) -> dict[str, dict]:
        with self._lock:
            if prompt_id not in self._history:
                return {}
            return {prompt_id: copy.deepcopy(self._history[prompt_id])}

    def clear_history(self) -> None:
        with self._lock:
            self._history.clear()

    def delete_history(self, prompt_id: str) -> None:
        with self._lock:
            self._history.pop(prompt_id, None)

    def set_flag(self, name: str, value: Any) -> None:
        with self._lock:
            self._flags[name] = value
            self._wakeup.notify()

    def take_flags(self) -> dict[str, Any]:
        with self._lock:
            flags, self._flags = self._flags, {}
            return flags
