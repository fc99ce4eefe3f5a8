"""Shared fixtures: a running ComfyUI (stand-in or real, see tests/comfy_backends.py); and a
run fails when its tests leave a process running (tests/leaks.py)."""
from __future__ import annotations

import json

import pytest

from services.proc_death import become_subreaper
from tests.comfy_backends import KIND, start_comfy
from tests.leaks import leftovers
from tests.timings import TIMINGS


def pytest_configure(config):
    # Orphans of the suite's processes come to pytest rather than init: see tests/leaks.py.
    become_subreaper()


def pytest_sessionfinish(session):
    leaked = leftovers()
    if leaked:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.ensure_newline()
        reporter.section("processes the tests left running (now killed)", sep="!", red=True)
        for line in leaked:
            reporter.write_line(line)


def pytest_collection_modifyitems(config, items):
    # With COMFYUI_DIR set (make test-real), run only the tests that talk to ComfyUI.
    if KIND == "real":
        keep = [item for item in items if "comfy" in item.keywords]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def pytest_terminal_summary(terminalreporter):
    for topic, measured in TIMINGS.items():
        if measured:
            terminalreporter.write_line(f"{topic} timings: " + json.dumps(measured))


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
