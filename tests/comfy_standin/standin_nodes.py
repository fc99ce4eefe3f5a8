"""Test-only nodes (category `_standin`) that make a run slow, hang, fail, or kill the process.

All four are output nodes, so a prompt made of one of them alone is valid, and all take
an optional `images` input so they can sit behind image nodes. They are never served
from the cache: each run really sleeps, raises or exits (as a ComfyUI node whose
IS_CHANGED returns a new value every time).

- StandinSleep(seconds: FLOAT, steps: INT = 10, images: IMAGE?) -> IMAGE
  Sleeps `seconds` in `steps` equal slices and reports a `progress` event per slice.
  `/interrupt` stops it between slices. Outputs `images`, or one 8x8 black image.
- StandinHang(seconds: FLOAT, images: IMAGE?) -> IMAGE
  Blocks `seconds` in one call that reports nothing and ignores `/interrupt`, like a node stuck
  in a CUDA call or a deadlock (the stall watchdog's case). Outputs like StandinSleep.
- StandinRaise(message: STRING, images: IMAGE?) -> nothing
  Raises RuntimeError(message), so the run ends in `execution_error`.
- StandinExit(code: INT, images: IMAGE?) -> nothing
  Ends the whole process with os._exit(code) once the `executing` event for it has been
  sent, like a ComfyUI that crashes mid-run.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

from .images import ImageBatch
from .nodes import Node, NodeResult


class _StandinNode(Node):
    category = "_standin"
    python_module = "custom_nodes.comfy_standin"
    output_node = True

    @classmethod
    def fingerprint(cls, paths, **inputs):
        return uuid.uuid4().hex


class StandinSleep(_StandinNode):
    name = "StandinSleep"
    description = "Test stand-in: sleeps in steps, reporting progress and honouring interrupts."
    outputs = ("IMAGE",)

    @classmethod
    def input_types(cls, paths):
        return {
            "required": {
                "seconds": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0, "step": 0.01}],
                "steps": ["INT", {"default": 10, "min": 1, "max": 10000}],
            },
            "optional": {"images": ["IMAGE"]},
        }

    def run(self, ctx, seconds, steps=10, images=None):
        for step in range(1, steps + 1):
            ctx.check_interrupt()
            ctx.sleep(seconds / steps)
            ctx.check_interrupt()
            ctx.progress(step, steps)
        return NodeResult((images if images is not None else ImageBatch.blank(8, 8, 1),))


class StandinHang(_StandinNode):
    name = "StandinHang"
    description = "Test stand-in: blocks without progress, ignoring interrupts."
    outputs = ("IMAGE",)

    @classmethod
    def input_types(cls, paths):
        return {
            "required": {"seconds": ["FLOAT", {"default": 60.0, "min": 0.0, "max": 3600.0, "step": 0.01}]},
            "optional": {"images": ["IMAGE"]},
        }

    def run(self, ctx, seconds, images=None):
        time.sleep(seconds)  # not ctx.sleep: an interrupt must not end it
        return NodeResult((images if images is not None else ImageBatch.blank(8, 8, 1),))


class StandinRaise(_StandinNode):
    name = "StandinRaise"
    description = "Test stand-in: fails with RuntimeError(message)."

    @classmethod
    def input_types(cls, paths):
        return {
            "required": {"message": ["STRING", {"default": "StandinRaise failed on purpose"}]},
            "optional": {"images": ["IMAGE"]},
        }

    def run(self, ctx, message, images=None):
        raise RuntimeError(message)


class StandinExit(_StandinNode):
    name = "StandinExit"
    description = "Test stand-in: ends the whole process with the given exit code."

    @classmethod
    def input_types(cls, paths):
        return {
            "required": {"code": ["INT", {"default": 1, "min": 0, "max": 255}]},
            "optional": {"images": ["IMAGE"]},
        }

    def run(self, ctx, code, images=None):
        ctx.flush_messages()
        print(f"StandinExit: ending the process with exit code {code}", flush=True)
        sys.stderr.flush()
        os._exit(code)


NODES = (StandinSleep, StandinHang, StandinRaise, StandinExit)
