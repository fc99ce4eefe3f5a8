"""Shared fixtures: a running ComfyUI (stand-in or real, see tests/comfy_backends.py)."""
from __future__ import annotations

import json

import pytest

from tests.comfy_backends import KIND, start_comfy
from tests.docker_engine import TIMINGS as IMAGE_TIMINGS


def pytest_collection_modifyitems(config, items):
    # With COMFYUI_DIR set (make test-real), run only the tests that talk to ComfyUI.
    if KIND == "real":
        keep = [item for item in items if "comfy" in item.keywords]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def pytest_terminal_summary(terminalreporter):
    if IMAGE_TIMINGS:
        terminalreporter.write_line("image test timings: " + json.dumps(IMAGE_TIMINGS))


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """A ComfyUI shared by a module's tests; tests must not kill it."""
    handle = start_comfy(tmp_path_factory.mktemp("comfy"))
    yield handle
    handle.stop()


@pytest.fixture
def fresh_comfy(tmp_path):
    """A ComfyUI of this test alone: it may be crashed or killed."""
    handle = start_comfy(tmp_path)
    yield handle
    handle.stop()
