"""Runs queued prompts one at a time on a worker thread and reports like ComfyUI does.

Event order per prompt (see tests/fixtures/comfy/*_run.json):
  execution_start, execution_cached, then per node
  progress_state(running), executing, [progress_state + progress per step], [executed],
  progress_state(finished); then execution_success | execution_error |
  execution_interrupted; the history entry is written; a `status` broadcast; and last
  `executing` with node null.
Cached output nodes only re-send `executed` with their earlier UI output and a
`progress_state` marking them finished. Per-prompt events go only to the socket of the
prompt's client_id (none without one); only `execution_interrupted` is broadcast when the
prompt has no client_id, as ComfyUI does.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .cache import CacheEntry, OutputCache
from .files import Paths
from .graph import ExecutionOrder
from .nodes import Interrupted, Node, RunContext
from .prompt_queue import PromptQueue, QueueItem
from .validation import full_type_name

log = logging.getLogger("comfy_standin")

# How long StandinExit waits for its last websocket messages to leave.
FLUSH_TIMEOUT_S = 2.0


class Events(Protocol):
    def send(self, event: str, data: dict, sid: str | None) -> None:
        """Queue a websocket message for client `sid`, or for every client if sid is None."""

    def flush(self, timeout: float) -> None:
        """Block until the messages queued so far have been handed to the sockets."""


class NodeFailed(Exception):
    def __init__(self, node_id: str, error: Exception, inputs: dict):
        super().__init__(str(error))
        self.node_id = node_id
        self.error = error
        self.inputs = inputs


class ProgressState:
    """The per-prompt node states that every `progress_state` message repeats in full."""

    def __init__(self, prompt_id: str, emit: Callable[[str, dict], None]):
        self._prompt_id = prompt_id
        self._emit = emit
        self._nodes: dict[str, dict] = {}

    def start(self, node_id: str) -> None:
        self._nodes[node_id] = {"value": 0.0, "max": 1.0, "state": "running"}
        self._send()

    def update(self, node_id: str, value: int, total: int) -> None:
        self._nodes[node_id] = {"value": value, "max": total, "state": "running"}
        self._send()
        self._emit("progress", {"value": value, "max": total, "prompt_id": self._prompt_id, "node": node_id})

    def finish(self, node_id: str) -> None:
        # A cached node never started, so ComfyUI reports it with integer 1/1.
        state = self._nodes.get(node_id, {"max": 1})
        self._nodes[node_id] = {"value": state["max"], "max": state["max"], "state": "finished"}
        self._send()

    def _send(self) -> None:
        nodes = {
            node_id: {**state, "node_id": node_id, "prompt_id": self._prompt_id,
                      "display_node_id": node_id, "parent_node_id": None, "real_node_id": node_id}
            for node_id, state in self._nodes.items()
        }
        self._emit("progress_state", {"prompt_id": self._prompt_id, "nodes": nodes})


@dataclass
class RunRecord:
    success: bool
    messages: list[tuple[str, dict]]
    outputs: dict[str, dict]
    meta: dict[str, dict]


class PromptExecutor:
    def __init__(self, node_types: dict[str, type[Node]], paths: Paths, events: Events,
                 disable_metadata: bool):
        self.node_types = node_types
        self.paths = paths
        self.events = events
        self.disable_metadata = disable_metadata
        self.cache = OutputCache()
        # Node instances live across prompts per node id, e.g. PreviewImage keeps its file suffix.
        self._instances: dict[tuple[str, str], Node] = {}
        self._interrupt = threading.Event()
        # Read by the websocket handler to re-send the current node to a reconnecting client.
        self.client_id: str | None = None
        self.last_node_id: str | None = None

    def interrupt(self) -> None:
        self._interrupt.set()

    def reset(self) -> None:
        """Forget cached outputs (`/free` with free_memory)."""
        self.cache.clear()
        self._instances.clear()

    def instance(self, node_id: str, node_type: type[Node]) -> Node:
        key = (node_id, node_type.name)
        if key not in self._instances:
            self._instances[key] = node_type()
        return self._instances[key]

    def keep_instances_of(self, prompt: dict) -> None:
        self._instances = {key: node for key, node in self._instances.items() if key[0] in prompt}

    def execute(self, item: QueueItem) -> RunRecord:
        self._interrupt.clear()
        self.client_id = item.extra_data.get("client_id")
        run = _Run(self, item)
        try:
            return run.execute()
        finally:
            self.last_node_id = None

    def check_interrupt(self) -> None:
        if self._interrupt.is_set():
            raise Interrupted("Processing interrupted")

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early when an interrupt is requested."""
        self._interrupt.wait(seconds)


class _Run:
    """One execution of one queued prompt."""

    def __init__(self, executor: PromptExecutor, item: QueueItem):
        self.ex = executor
        self.item = item
        self.prompt = item.prompt
        self.messages: list[tuple[str, dict]] = []
        self.executed: list[str] = []
        self.current_node: str | None = None
        self.progress = ProgressState(item.prompt_id, self.to_client)

    def to_client(self, event: str, data: dict) -> None:
        if self.ex.client_id is not None:
            self.ex.events.send(event, data, self.ex.client_id)

    def add_message(self, event: str, data: dict, broadcast: bool = False) -> None:
        """A status message: kept for history and sent (broadcast ones even without a client)."""
        data = {**data, "timestamp": int(time.time() * 1000)}
        self.messages.append((event, data))
        if self.ex.client_id is not None or broadcast:
            self.ex.events.send(event, data, self.ex.client_id)

    def node_type(self, node_id: str) -> type[Node]:
        return self.ex.node_types[self.prompt[node_id]["class_type"]]

    def execute(self) -> RunRecord:
        prompt_id = self.item.prompt_id
        cache = self.ex.cache
        self.add_message("execution_start", {"prompt_id": prompt_id})
        cache.set_prompt(self.prompt, self.fingerprint)
        self.ex.keep_instances_of(self.prompt)
        cached = [node_id for node_id in self.prompt if cache.get(node_id) is not None]
        self.add_message("execution_cached", {"nodes": cached, "prompt_id": prompt_id})

        order = ExecutionOrder(self.prompt, lambda n: self.node_type(n).output_node,
                               lambda n: cache.get(n) is not None)
        for output_id in self.item.outputs:
            order.add(output_id)
        success = False
        try:
            while order:
                node_id = order.next()
                self.run_node(node_id)
                self.executed.append(node_id)
                order.done(node_id)
            success = True
            self.add_message("execution_success", {"prompt_id": prompt_id})
        except Interrupted:
            log.info("Processing interrupted")
            self.add_message("execution_interrupted", {
                "prompt_id": prompt_id, "node_id": self.current_node,
                "node_type": self.prompt[self.current_node]["class_type"],
                "executed": list(self.executed)}, broadcast=True)
        except NodeFailed as failure:
            self.report_failure(failure)

        # History shows the UI output of every node of this prompt that has one cached,
        # including nodes finished before a failure.
        outputs, meta = {}, {}
        for node_id in self.prompt:
            entry = cache.get(node_id)
            if entry is not None and entry.ui:
                outputs[node_id], meta[node_id] = entry.ui, entry.meta
        return RunRecord(success, self.messages, outputs, meta)

    def fingerprint(self, node_id: str) -> Any:
        node = self.prompt[node_id]
        literals = {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
        try:
            return self.node_type(node_id).fingerprint(self.ex.paths, **literals)
        except Exception:
            # Like ComfyUI's NaN for a failing IS_CHANGED: never equal, so never cached.
            return object()

    def run_node(self, node_id: str) -> None:
        node_type = self.node_type(node_id)
        prompt_id = self.item.prompt_id
        entry = self.ex.cache.get(node_id)
        self.current_node = node_id
        if entry is not None:
            self.to_client("executed", {"node": node_id, "display_node": node_id,
                                        "output": entry.ui or None, "prompt_id": prompt_id})
            self.progress.finish(node_id)
            return

        self.progress.start(node_id)
        inputs: dict = {}
        try:
            inputs = self.resolve_inputs(node_id, node_type)
            if self.ex.client_id is not None:
                self.ex.last_node_id = node_id
            self.to_client("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id})
            self.ex.check_interrupt()
            result = self.ex.instance(node_id, node_type).run(self.context(node_id), **inputs)
        except Interrupted:
            raise
        except Exception as error:
            raise NodeFailed(node_id, error, inputs) from error

        meta = {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
        self.ex.cache.set(node_id, CacheEntry(result.outputs, result.ui, meta))
        if result.ui:
            self.to_client("executed", {"node": node_id, "display_node": node_id,
                                        "output": result.ui, "prompt_id": prompt_id})
        self.progress.finish(node_id)

    def resolve_inputs(self, node_id: str, node_type: type[Node]) -> dict:
        """Keyword arguments for run(): linked outputs, literals, then hidden values."""
        declared = node_type.input_types(self.ex.paths)
        visible = {**declared.get("required", {}), **declared.get("optional", {})}
        inputs = {}
        for name, value in self.prompt[node_id]["inputs"].items():
            if name not in visible:
                continue
            if isinstance(value, list):
                inputs[name] = self.ex.cache.get(value[0]).outputs[value[1]]
            else:
                inputs[name] = value
        hidden_values = {"PROMPT": self.prompt, "EXTRA_PNGINFO": self.item.extra_data.get("extra_pnginfo"),
                         "UNIQUE_ID": node_id}
        for name, kind in declared.get("hidden", {}).items():
            inputs[name] = hidden_values.get(kind)
        return inputs

    def context(self, node_id: str) -> RunContext:
        return RunContext(
            paths=self.ex.paths,
            disable_metadata=self.ex.disable_metadata,
            check_interrupt=self.ex.check_interrupt,
            progress=lambda value, total: self.progress.update(node_id, value, total),
            sleep=self.ex.sleep,
            flush_messages=lambda: self.ex.events.flush(FLUSH_TIMEOUT_S),
        )

    def report_failure(self, failure: NodeFailed) -> None:
        error = failure.error
        log.error("!!! Exception during processing !!! %s", error)
        log.error("".join(traceback.format_exception(error)))
        self.add_message("execution_error", {
            "prompt_id": self.item.prompt_id,
            "node_id": failure.node_id,
            "node_type": self.prompt[failure.node_id]["class_type"],
            "executed": list(self.executed),
            # ComfyUI appends a newline and an (empty unless out of memory) tip.
            "exception_message": f"{error}\n",
            "exception_type": full_type_name(error),
            "traceback": traceback.format_tb(error.__traceback__),
            "current_inputs": {name: [_format_value(value)] for name, value in failure.inputs.items()},
            "current_outputs": list(self.prompt),
        })


def _format_value(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


class Worker(threading.Thread):
    """ComfyUI's prompt worker: take, execute, record history, then announce the end."""

    def __init__(self, queue: PromptQueue, executor: PromptExecutor, events: Events):
        super().__init__(name="prompt-worker", daemon=True)
        self._queue = queue
        self._executor = executor
        self.events = events

    def run(self) -> None:
        while True:
            task = self._queue.get()
            if self._queue.take_flags().get("free_memory"):
                self._executor.reset()
            if task is not None:
                self._run(*task)

    def _run(self, task_id: int, item: QueueItem) -> None:
        started = time.perf_counter()
        record = self._executor.execute(item)
        status = {"status_str": "success" if record.success else "error",
                  "completed": record.success, "messages": record.messages}
        self._queue.task_done(task_id, {"outputs": record.outputs, "status": status, "meta": record.meta})
        client_id = item.extra_data.get("client_id")
        if client_id is not None:
            self.events.send("executing", {"node": None, "prompt_id": item.prompt_id}, client_id)
        log.info("Prompt executed in %.2f seconds", time.perf_counter() - started)
        sys.stdout.flush()
