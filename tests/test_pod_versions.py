"""Pod mode switching ComfyUI between installed versions through supervisord."""
import concurrent.futures
import time

import pytest

from services.config import Settings
from services.versions.install import install
from services.versions.spec import SpecStore
from tests import workflows
from tests.pod_process import start_pod
from tests.versions_support import MAIN_PY, commit, file_url, write_spec


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    root = tmp_path_factory.mktemp("pod-versions")
    repo = root / "ComfyUI-src"
    pinned = commit(repo, {"main.py": MAIN_PY, "requirements.txt": ""})
    for version_id in ("one", "two", "three"):
        write_spec(root / "versions", version_id, (file_url(repo), pinned),
                   args=["--disable-metadata"] if version_id == "two" else [])
    env = {"VERSIONS_DIR": str(root / "versions"), "DEFAULT_VERSION_ID": "one", "LOG_SILENT": "1"}
    settings = Settings.from_env({**env, "DATA_ROOT": str(root / "pod" / "data")})
    specs = SpecStore(settings.versions_dir)
    for version_id in ("one", "two"):  # "three" stays uninstalled
        install(specs.load(version_id), settings)
    pod = start_pod(root / "pod", env=env, comfy_home="unset")
    yield pod
    pod.stop()


def healthz_version(pod, expected, timeout=10):
    """The version /healthz reports, once its snapshot (refreshed every second) has had time
    to show `expected`."""
    deadline = time.monotonic() + timeout
    while True:
        version = pod.request("GET", "/healthz")[1]["version"]["comfy"]
        if version == expected or time.monotonic() > deadline:
            return version
        time.sleep(0.2)


def run(pod, version_id, workflow=None, **extra):
    return pod.request("POST", "/run", {"version_id": version_id, "workflow": workflow or workflows.image(), **extra})


def test_boots_the_default_version(pod):
    assert healthz_version(pod, "one") == "one"
    status, result = run(pod, "one")
    assert status == 200 and result["comfy_version"] == "one"


def test_a_job_for_another_version_switches_comfyui(pod):
    before = pod.pid("comfyui")
    status, result = run(pod, "two", workflows.image(color=2))
    assert status == 200, result
    assert result["comfy_version"] == "two" and result["outputs"]
    assert pod.pid("comfyui") != before
    assert healthz_version(pod, "two") == "two"


def test_a_switch_waits_for_running_jobs_of_the_old_version(pod):
    status, accepted = run(pod, "two", workflows.sleep_then_save(2.0, steps=4), **{"async": True})
    deadline = time.monotonic() + 10
    while pod.request("GET", f"/jobs/{accepted['job_id']}")[1]["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    started = time.monotonic()
    status, result = run(pod, "one", workflows.image(color=3))
    assert status == 200 and result["comfy_version"] == "one"
    job = pod.request("GET", f"/jobs/{accepted['job_id']}")[1]
    assert job["state"] == "succeeded" and job["result"]["comfy_version"] == "two"  # never killed mid-job
    assert time.monotonic() - started > 1.0  # it waited for the slow job


def test_a_version_that_is_not_installed_is_refused(pod):
    status, error = run(pod, "three")
    assert (status, error["error"]) == (409, "version_not_installed:three")


def test_concurrent_jobs_of_two_versions_all_finish(pod):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: run(pod, ("one", "two")[i % 2], workflows.image(color=100 + i)), range(8)))
    assert [status for status, _ in answers] == [200] * 8, answers
    assert sorted(r["comfy_version"] for _, r in answers) == ["one"] * 4 + ["two"] * 4
