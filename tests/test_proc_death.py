"""Children that die with their parent (services/proc_death.py), with real processes: the
kernel's parent-death signal fires when the forking *thread* ends, so `spawn` forks on a thread
that lives as long as the process, and a ComfyUI started from a worker thread outlives it."""
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.comfy.launcher import ComfyLauncher
from services.config import REPO_ROOT
from services.proc_death import die_with_parent, spawn
from tests.leaks import gone
from tests.standin_process import free_port, write_fake_comfy_home

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def in_a_thread_that_ends(start):
    """Run `start()` on a thread, wait for that thread to end, return what it returned."""
    box = []
    thread = threading.Thread(target=lambda: box.append(start()))
    thread.start()
    thread.join()
    return box[0]


def test_the_signal_follows_the_forking_thread_so_spawn_forks_on_a_lasting_one():
    # Why spawn exists: a child forked (with the death signal) on a thread that then ends dies.
    plain = in_a_thread_that_ends(lambda: subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent()))
    spawned = in_a_thread_that_ends(lambda: spawn(["sleep", "60"]))
    try:
        assert plain.wait(5) == -9
        time.sleep(0.3)
        assert spawned.poll() is None
    finally:
        spawned.kill()
        spawned.wait()


PARENT = """
import subprocess, sys, threading, time
from services.proc_death import die_with_parent, spawn
spawned = []
worker = threading.Thread(target=lambda: spawned.append(spawn(["sleep", "60"])))
worker.start(); worker.join()
tool = subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent())  # as services/versions/proc.py
print(spawned[0].pid, tool.pid, flush=True)
time.sleep(60)
"""


def test_children_die_with_a_parent_killed_outright():
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(PARENT)], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2 and not any(gone(pid, 0.3) for pid in pids)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    assert all(gone(pid, 5) for pid in pids)


def test_comfy_started_from_a_pool_thread_outlives_the_pool(tmp_path):
    home = tmp_path / "ComfyUI"
    write_fake_comfy_home(home)
    launcher = ComfyLauncher(comfy_home=home, python=sys.executable, host="127.0.0.1", port=free_port(),
                             io_dir=tmp_path / "io", run_dir=tmp_path / "run",
                             model_roots=[tmp_path / "models"])
    with ThreadPoolExecutor(1) as pool:  # what asyncio.to_thread runs on
        pool.submit(launcher.ensure_running, 30).result()
    try:
        time.sleep(0.3)  # the pool's thread has ended
        assert launcher.is_alive()
        with urllib.request.urlopen(f"{launcher.url}/prompt", timeout=5) as answer:
            assert answer.status == 200
    finally:
        assert launcher.stop() == 0


FORKER = """
import os
from services.proc_death import spawn
spawn(["true"]).wait()
child = os.fork()
if child == 0:  # a forked child (multiprocessing does this) spawns on a spawner of its own
    os._exit(spawn(["true"]).wait())
print(os.waitpid(child, 0)[1], flush=True)
"""


def test_a_forked_child_spawns_too():
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(FORKER)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr
