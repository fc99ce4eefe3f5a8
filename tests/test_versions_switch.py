"""Switching ComfyUI between versions for jobs (VersionedComfy).

The scheduling tests use a fake ComfyUI that records starts and stops, so the order of events
is exact and nothing sleeps. The end-to-end test runs real jobs on the ComfyUI stand-in,
started from each installed version's own ComfyUI folder and virtualenv.
"""
from __future__ import annotations

import asyncio

import psutil
import pytest

from services.config import REPO_ROOT, Settings
from services.errors import AppError
from services.jobs.runner import JobRunner
from services.versions.install import install, state
from services.versions.layout import Layout
from services.versions.spec import SpecStore
from services.comfy.runtime import Runtime, resolve
from services.comfy.versioned import VersionedComfy
from services.versions.verify import verify
from tests.versions_support import World, file_url, write_spec

WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Versions `one` and `two` installed once for the module; `two` has a ComfyUI argument."""
    root = tmp_path_factory.mktemp("switch")
    world = World(root / "world")
    settings = world.settings(root)
    write_spec(settings.versions_dir, "one", (file_url(world.comfy), world.comfy_v1))
    write_spec(settings.versions_dir, "two", (file_url(world.comfy), world.comfy_v2), args=["--disable-smart-memory"])
    specs = SpecStore(settings.versions_dir)
    for version_id in ("one", "two"):
        install(specs.load(version_id), settings)
    return world, root


def make_settings(installed, **env):
    world, root = installed
    return world.settings(root, COMFY_START_TIMEOUT="30", **env)


def with_free_port(settings):
    """For the tests that start a real ComfyUI (the stand-in); the others never bind a port."""
    from tests.standin_process import free_port
    return settings.replace(comfy_port=free_port())


class FakeComfy:
    """Records what the provider asks of one started ComfyUI."""

    def __init__(self, runtime: Runtime, events: list):
        self.runtime, self.events = runtime, events
        self.closed = False
        events.append(("start", runtime.label))

    async def client_for(self, spec):
        return self

    def report_crash(self, comfy):
        self.events.append(("crash", self.runtime.label))

    async def close(self):
        self.closed = True
        self.events.append(("stop", self.runtime.label))


def fake_provider(settings):
    events: list = []
    return VersionedComfy(settings, start=lambda runtime: FakeComfy(runtime, events)), events


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def specs_of(settings):
    return SpecStore(settings.versions_dir)


def test_jobs_of_one_version_share_comfyui_and_a_switch_waits_for_them_without_starvation(installed):
    settings = make_settings(installed)
    specs = specs_of(settings)
    one, two = specs.load("one"), specs.load("two")

    async def scenario():
        provider, events = fake_provider(settings)
        await provider.client_for(one)
        await provider.client_for(one)          # same version: runs alongside the first job
        assert events == [("start", "one")] and provider.current_version == "one"
        wants_two = asyncio.create_task(provider.client_for(two))
        await settle()
        late_one = asyncio.create_task(provider.client_for(one))
        await settle()
        assert not wants_two.done() and not late_one.done()  # the late job queues behind the switch
        provider.release(None)
        await settle()
        assert not wants_two.done()
        provider.release(None)                     # the last job of `one` is done: switch now
        await wants_two
        assert events == [("start", "one"), ("stop", "one"), ("start", "two")]
        assert provider.current_version == "two" and not late_one.done()
        provider.release(None)
        await late_one
        assert events[-2:] == [("stop", "two"), ("start", "one")]
        provider.release(None)
        await provider.close()
        assert events[-1] == ("stop", "one") and provider.current_version is None

    asyncio.run(scenario())


def test_a_cancelled_waiter_or_a_comfyui_that_fails_to_start_blocks_no_later_job(installed):
    settings = make_settings(installed)
    specs = specs_of(settings)
    one, two = specs.load("one"), specs.load("two")

    class FailsToStart(FakeComfy):
        async def client_for(self, spec):
            raise AppError("comfy_init_failed", "exited at boot", suffix="exited")

    async def scenario():
        events: list = []
        provider = VersionedComfy(settings, start=lambda runtime: (FailsToStart if runtime.label == "two"
                                                                    else FakeComfy)(runtime, events))
        await provider.client_for(one)
        waiting = asyncio.create_task(provider.client_for(two))
        await settle()
        waiting.cancel()                      # e.g. the job was cancelled while it waited
        await asyncio.gather(waiting, return_exceptions=True)
        await provider.client_for(one)        # nobody is queued any more: runs at once
        provider.release(None)
        provider.release(None)
        with pytest.raises(AppError) as failed:
            await provider.client_for(two)
        assert failed.value.code == "comfy_init_failed:exited"
        await asyncio.wait_for(provider.client_for(one), 5)   # the failed job holds nothing
        assert events == [("start", "one"), ("stop", "one"), ("start", "two"), ("stop", "two"), ("start", "one")]

    asyncio.run(scenario())


def test_a_version_that_is_not_installed_fails_the_job_unless_auto_install_is_on(installed):
    world, _ = installed
    settings = make_settings(installed)
    write_spec(settings.versions_dir, "three", (file_url(world.comfy), world.comfy_v2))
    three = specs_of(settings).load("three")

    async def refused():
        provider, events = fake_provider(settings)
        with pytest.raises(AppError) as failed:
            await provider.client_for(three)
        assert failed.value.code == "version_not_installed:three"
        assert events == [] and provider.current_version is None

    async def installed_first():
        provider, events = fake_provider(settings.replace(auto_install_versions=True))
        await provider.client_for(three)
        assert events == [("start", "three")] and provider.current_version == "three"
        provider.release(None)

    asyncio.run(refused())
    asyncio.run(installed_first())
    assert state(three, settings) == "installed"


def test_a_failed_auto_install_leaves_the_running_version_running(installed):
    world, _ = installed
    settings = make_settings(installed, AUTO_INSTALL_VERSIONS="1")
    write_spec(settings.versions_dir, "broken", (file_url(world.comfy), "f" * 40))
    specs = specs_of(settings)

    async def scenario():
        provider, events = fake_provider(settings)
        await provider.client_for(specs.load("one"))
        provider.release(None)
        with pytest.raises(AppError) as failed:
            await provider.client_for(specs.load("broken"))
        assert failed.value.code == "version_install_failed:broken:comfyui_commit"
        assert events == [("start", "one")] and provider.current_version == "one"
        await provider.client_for(specs.load("one"))    # no restart needed
        assert events == [("start", "one")]

    asyncio.run(scenario())


def test_a_running_version_whose_spec_changed_is_reinstalled_once_its_jobs_are_done(installed):
    world, _ = installed
    settings = make_settings(installed, AUTO_INSTALL_VERSIONS="1")
    write_spec(settings.versions_dir, "edited", (file_url(world.comfy), world.comfy_v1))
    specs = specs_of(settings)

    async def scenario():
        provider, events = fake_provider(settings)
        await provider.client_for(specs.load("edited"))
        write_spec(settings.versions_dir, "edited", (file_url(world.comfy), world.comfy_v2))
        edited = specs.load("edited")
        second = asyncio.create_task(provider.client_for(edited))
        await settle()
        assert not second.done()               # its folder is not replaced under a running job
        provider.release(None)
        await second
        assert events == [("start", "edited"), ("stop", "edited"), ("start", "edited")]
        assert state(edited, settings) == "installed"

    asyncio.run(scenario())


def test_developer_mode_runs_comfy_home_for_every_version_without_switching(installed, tmp_path):
    settings = make_settings(installed, COMFY_HOME=str(tmp_path / "ComfyUI"))
    specs = specs_of(settings)
    runtime = resolve(specs.load("two"), settings)
    assert (runtime.comfy_home, runtime.python) == (settings.comfy_home, settings.comfy_python)

    async def scenario():
        provider, events = fake_provider(settings)
        for version_id in ("one", "two", "one"):
            await provider.client_for(specs.load(version_id))
            provider.release(None)
        assert events == [("start", f"comfy_home:{tmp_path / 'ComfyUI'}")]
        assert provider.current_version == f"comfy_home:{tmp_path / 'ComfyUI'}"

    asyncio.run(scenario())


def test_jobs_switch_the_real_comfyui_between_installed_versions(installed):
    settings = with_free_port(make_settings(installed))
    specs = specs_of(settings)
    layout = {v: Layout.of(settings.versions_root, v).tree for v in ("one", "two")}

    def running_command(provider) -> list[str]:
        return psutil.Process(provider._comfy.launcher.pid).cmdline()

    async def scenario():
        provider = VersionedComfy(settings)
        runner = JobRunner(settings, specs, provider)
        try:
            first = await runner.run({"version_id": "one", "workflow": WORKFLOW})
            assert first["comfy_version"] == "one" and first["outputs"]
            old_pid = provider._comfy.launcher.pid
            assert running_command(provider)[0] == str(layout["one"].python)

            second = await runner.run({"version_id": "two", "workflow": WORKFLOW})
            assert second["comfy_version"] == "two"
            assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE
            command = running_command(provider)
            assert command[0] == str(layout["two"].python) and "--disable-smart-memory" in command

            with pytest.raises(AppError) as rejected:
                await runner.run({"version_id": "two", "workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})
            assert rejected.value.extra["comfy_version"] == "two"
        finally:
            await runner.close()
            await provider.close()

    asyncio.run(scenario())


@pytest.mark.comfy
def test_a_real_comfyui_tree_installs_as_a_version_and_answers_a_job(tmp_path):
    """Opt-in (`make test-real`): COMFYUI_DIR is a real ComfyUI checkout, COMFYUI_PYTHON a python
    with torch (the base environment). Its tree is committed to a local repository (a checkout
    may lack large blobs, so it cannot always be fetched from) and installed like any version:
    ComfyUI's own requirements.txt is resolved against the base, then the job runs on CPU."""
    import os
    import shutil
    import sys

    from tests.versions_support import commit

    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("only with a real ComfyUI: make test-real COMFYUI_DIR=...")
    repo = tmp_path / "ComfyUI"
    shutil.copytree(comfy_dir, repo, ignore=shutil.ignore_patterns(".git", "__pycache__", "output", "temp", "user"))
    pinned = commit(repo, {}, "real ComfyUI tree")
    demo = SpecStore(REPO_ROOT / "versions").load("demo")
    write_spec(tmp_path / "versions", "real", (file_url(repo), pinned), args=["--cpu"])
    settings = Settings.from_env({"DATA_ROOT": str(tmp_path / "data"), "VERSIONS_DIR": str(tmp_path / "versions"),
                                  "VERSIONS_BASE_PYTHON": os.environ.get("COMFYUI_PYTHON", sys.executable),
                                  "LOG_LEVEL": "warning"})
    settings = with_free_port(settings)
    specs = specs_of(settings)
    install(specs.load("real"), settings)

    async def job():
        provider = VersionedComfy(settings)
        runner = JobRunner(settings, specs, provider)
        try:
            return await runner.run({"version_id": "real", "workflow": demo.workflow})
        finally:
            await runner.close()
            await provider.close()

    result = asyncio.run(job())
    assert result["comfy_version"] == "real" and result["outputs"][0]["filename"].startswith("demo")
    assert verify(specs.load("real"), settings)["ok"]
