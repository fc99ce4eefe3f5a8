"""The ComfyUI launcher against real processes: a fake COMFY_HOME running the stand-in, and
main.py files that crash, hang or never bind."""
import os
import socket
import sys
import time

import psutil
import pytest

from services.comfy.launcher import ComfyLauncher, State
from services.config import Settings
from services.errors import AppError
from tests.standin_process import free_port, write_fake_comfy_home


def make(tmp_path, home, port=None, **kw):
    return ComfyLauncher(comfy_home=home, python=sys.executable, host="127.0.0.1", port=port or free_port(),
                         io_dir=tmp_path / "io", run_dir=tmp_path / "run",
                         model_roots=[tmp_path / "cache" / "models", tmp_path / "models"], **kw)


def failure(launcher, timeout=20):
    with pytest.raises(AppError) as err:
        launcher.start()
        launcher.wait_ready(timeout)
    assert launcher.state == State.DEFUNCT
    return err.value


def test_starts_answers_and_stops_cleanly(tmp_path):
    home = tmp_path / "ComfyUI"
    write_fake_comfy_home(home)
    launcher = make(tmp_path, home)
    launcher.ensure_running(30)
    assert launcher.state == State.READY and launcher.is_alive()
    config = (tmp_path / "run" / "extra_model_paths.yaml").read_text()
    assert str(tmp_path / "cache" / "models") in config and "diffusion_models\\nunet" in config
    assert all((tmp_path / "io" / d).is_dir() for d in ("output", "input", "user"))
    launcher.ensure_running(30)  # already ready: a no-op
    assert launcher.stop() == 0 and launcher.state == State.STOPPED


def test_restart_after_crash(tmp_path):
    home = tmp_path / "ComfyUI"
    write_fake_comfy_home(home)
    launcher = make(tmp_path, home)
    launcher.ensure_running(30)
    first = launcher.pid
    os.kill(first, 9)
    time.sleep(0.2)
    launcher.ensure_running(30)
    assert launcher.pid != first and launcher.state == State.READY
    launcher.stop()


@pytest.mark.parametrize("env,spec_args,count", [
    ({"COMFY_CPU": "1"}, [], 1),
    ({"COMFY_CPU": "1", "COMFY_EXTRA_ARGS": "--cpu --lowvram"}, [], 1),
    ({"COMFY_CPU": "1"}, ["--cpu"], 1),
    ({"COMFY_CPU": "0"}, [], 0),
    ({"COMFY_CPU": "0", "COMFY_EXTRA_ARGS": "--cpu"}, [], 1),
])
def test_the_appliance_adds_the_cpu_flag_once_at_most(env, spec_args, count):
    launcher = ComfyLauncher.from_settings(Settings.from_env(env), extra_args=spec_args)
    assert launcher.command().count("--cpu") == count


def test_no_comfy_home(tmp_path):
    error = failure(make(tmp_path, tmp_path / "missing"))
    assert error.code == "comfy_init_failed:no_comfy_home"


def test_no_main_py(tmp_path):
    (tmp_path / "ComfyUI").mkdir()
    assert failure(make(tmp_path, tmp_path / "ComfyUI")).code == "comfy_init_failed:no_main_py"


def test_port_taken(tmp_path):
    home = tmp_path / "ComfyUI"
    write_fake_comfy_home(home)
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        port = squatter.getsockname()[1]
        assert failure(make(tmp_path, home, port=port)).code == "comfy_init_failed:port_in_use"


def test_import_crash_reports_the_log_tail(tmp_path):
    home = tmp_path / "ComfyUI"
    home.mkdir()
    (home / "main.py").write_text("print('Starting ComfyUI...')\nimport torchvision_that_is_missing\n")
    error = failure(make(tmp_path, home))
    assert error.code == "comfy_init_failed:import_error"
    assert "torchvision_that_is_missing" in error.extra["log_tail"] and "Starting ComfyUI" in error.extra["log_tail"]


def test_early_exit(tmp_path):
    home = tmp_path / "ComfyUI"
    home.mkdir()
    (home / "main.py").write_text("import sys\nprint('cuda error: no device')\nsys.exit(7)\n")
    error = failure(make(tmp_path, home))
    assert error.code == "comfy_init_failed:exited" and "status 7" in error.detail


def test_never_ready_times_out_and_is_killed(tmp_path):
    home = tmp_path / "ComfyUI"
    home.mkdir()
    (home / "main.py").write_text("import time\nprint('loading forever')\ntime.sleep(600)\n")
    launcher = make(tmp_path, home)
    error = failure(launcher, timeout=1.5)
    assert error.code == "comfy_init_failed:timeout"
    assert not launcher.is_alive()


def test_stop_takes_the_whole_process_group(tmp_path):
    home = tmp_path / "ComfyUI"
    write_fake_comfy_home(home)
    main = home / "main.py"
    # A custom node that spawns a helper process, which ComfyUI would leave behind.
    main.write_text("import subprocess\nsubprocess.Popen(['sleep', '1000'])\n" + main.read_text())
    launcher = make(tmp_path, home)
    launcher.ensure_running(30)
    children = psutil.Process(launcher.pid).children(recursive=True)
    assert any(c.name() == "sleep" for c in children)
    launcher.stop()
    time.sleep(0.2)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


STUBBORN_MAIN = """
import http.server, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
port = int(sys.argv[sys.argv.index('--port') + 1])
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'{}')
http.server.HTTPServer(('127.0.0.1', port), Ok).serve_forever()
"""


def test_stop_escalates_to_sigkill(tmp_path):
    home = tmp_path / "ComfyUI"
    home.mkdir()
    (home / "main.py").write_text(STUBBORN_MAIN)
    launcher = make(tmp_path, home)
    launcher.ensure_running(30)
    started = time.monotonic()
    assert launcher.stop(grace=1) == -9
    assert time.monotonic() - started < 8
