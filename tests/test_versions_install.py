"""Installing versions from local git repositories and wheels: what lands where, and every fault.

Each fault is real: a commit git cannot find, a repository that is not there, a requirement
pip cannot satisfy, a requirement that would replace a base package, two installer processes
at once, an installer SIGKILLed while pip runs. Nothing here needs the network.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from services.config import REPO_ROOT
from services.errors import AppError
from services.versions.install import install, remove, state
from services.versions.layout import Layout
from services.versions.registry import list_versions
from services.versions.spec import SpecStore
from services.versions.verify import verify
from tests.http_server import LocalServer, send
from tests.versions_support import World, file_url, git, write_spec

PY = sys.executable


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("world"))


@pytest.fixture
def settings(world, tmp_path):
    return world.settings(tmp_path)


def spec_of(settings, version_id):
    return SpecStore(settings.versions_dir).load(version_id)


def layout_of(settings, version_id) -> Layout:
    return Layout.of(settings.versions_root, version_id)


def in_venv(settings, version_id, code: str) -> str:
    python = layout_of(settings, version_id).tree.python
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def assert_nothing_half_built(settings, version_id):
    layout = layout_of(settings, version_id)
    assert not layout.tree.path.exists()
    assert not layout.work_dir.exists() or not any(layout.work_dir.iterdir())


def cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "services", "versions", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def node(world, name="hello", **extra):
    return {"name": name, "repo": str(world.node), "commit": world.node_v1, **extra}


# ---- what an install builds ---------------------------------------------------------------

def test_install_builds_pinned_checkouts_a_layered_venv_and_a_lock_file(world, settings):
    write_spec(settings.versions_dir, "full", (file_url(world.comfy), world.comfy_v1),
               nodes=[node(world)], requirements=["aiohttp"])
    result = install(spec_of(settings, "full"), settings)

    tree = layout_of(settings, "full").tree
    assert result.built and not result.waited and result.path == tree.path
    assert git(tree.comfy_dir, "rev-parse", "HEAD") == world.comfy_v1
    assert git(tree.node_dir("hello"), "rev-parse", "HEAD") == world.node_v1
    # The node's requirement went into the version's venv; aiohttp was already in the base
    # environment, which the venv sees instead of installing a second copy.
    where = json.loads(in_venv(settings, "full",
                               "import json, tinydep, aiohttp; print(json.dumps([tinydep.__file__, aiohttp.__file__]))"))
    assert where[0].startswith(str(tree.venv_dir))
    assert not where[1].startswith(str(tree.venv_dir))
    lock = tree.read_lock()
    assert lock["comfyui"]["commit"] == world.comfy_v1
    assert lock["custom_nodes"] == [{"name": "hello", "repo": str(world.node), "commit": world.node_v1}]
    assert lock["python"]["packages"] == {"tinydep": "1.0"}
    assert lock["python"]["base_packages"]["aiohttp"]
    assert state(spec_of(settings, "full"), settings) == "installed"
    assert_no_build_leftovers(settings, "full")
    # Built under .work/ and renamed: nothing in the venv may still name the build folder.
    assert ".work" not in (tree.venv_dir / "pyvenv.cfg").read_text()


def assert_no_build_leftovers(settings, version_id):
    work = layout_of(settings, version_id).work_dir
    assert not work.exists() or not any(work.iterdir())


def test_reinstalling_an_installed_version_is_a_noop_in_milliseconds(world, settings):
    write_spec(settings.versions_dir, "quick", (file_url(world.comfy), world.comfy_v1))
    spec = spec_of(settings, "quick")
    first = install(spec, settings)
    lock_before = layout_of(settings, "quick").tree.lock_file.stat().st_mtime_ns
    again = install(spec, settings)
    assert first.built and not again.built
    assert again.ms < 50
    assert layout_of(settings, "quick").tree.lock_file.stat().st_mtime_ns == lock_before


def test_a_relative_repo_path_is_read_from_the_specs_folder(world, settings):
    relative = os.path.relpath(world.comfy, settings.versions_dir)
    write_spec(settings.versions_dir, "rel", (relative, world.comfy_v2))
    install(spec_of(settings, "rel"), settings)
    assert git(layout_of(settings, "rel").tree.comfy_dir, "rev-parse", "HEAD") == world.comfy_v2


def test_a_changed_spec_makes_the_version_outdated_and_install_replaces_it(world, settings):
    write_spec(settings.versions_dir, "moving", (file_url(world.comfy), world.comfy_v1))
    install(spec_of(settings, "moving"), settings)
    write_spec(settings.versions_dir, "moving", (file_url(world.comfy), world.comfy_v2))
    spec = spec_of(settings, "moving")
    assert state(spec, settings) == "outdated"
    assert install(spec, settings).built
    assert git(layout_of(settings, "moving").tree.comfy_dir, "rev-parse", "HEAD") == world.comfy_v2
    assert state(spec, settings) == "installed"
    assert_no_build_leftovers(settings, "moving")


def test_custom_node_submodules_are_checked_out(world, settings, tmp_path, monkeypatch):
    from tests.versions_support import commit
    lib = tmp_path / "repos" / "lib"
    commit(lib, {"lib.py": "X = 1\n"})
    parent = tmp_path / "repos" / "with-submodule"
    commit(parent, {"__init__.py": ""})
    # git refuses file:// submodules unless told otherwise (CVE-2022-39253); real nodes use https.
    for key, value in {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "protocol.file.allow",
                       "GIT_CONFIG_VALUE_0": "always"}.items():
        monkeypatch.setenv(key, value)
    git(parent, "submodule", "add", "-q", file_url(lib), "vendor/lib")
    git(parent, "commit", "-q", "-m", "submodule")
    write_spec(settings.versions_dir, "sub", (file_url(world.comfy), world.comfy_v1),
               nodes=[{"name": "sub", "repo": file_url(parent), "commit": git(parent, "rev-parse", "HEAD")}])
    install(spec_of(settings, "sub"), settings)
    assert (layout_of(settings, "sub").tree.node_dir("sub") / "vendor" / "lib" / "lib.py").read_text() == "X = 1\n"


# ---- requirements and the base environment ----------------------------------------------

def test_a_requirement_replacing_a_base_package_is_refused_unless_the_spec_allows_it(world, settings):
    import tqdm
    write_spec(settings.versions_dir, "greedy", (file_url(world.comfy), world.comfy_v1),
               nodes=[{"name": "greedy", "repo": str(world.greedy), "commit": world.greedy_v1}])
    with pytest.raises(AppError) as refused:
        install(spec_of(settings, "greedy"), settings)
    assert refused.value.code == "version_base_override:greedy:tqdm"
    assert f"tqdm {tqdm.__version__} -> 0.0.1" in refused.value.detail
    assert_nothing_half_built(settings, "greedy")

    write_spec(settings.versions_dir, "greedy", (file_url(world.comfy), world.comfy_v1),
               nodes=[{"name": "greedy", "repo": str(world.greedy), "commit": world.greedy_v1}], allow=["TQDM"])
    install(spec_of(settings, "greedy"), settings)
    assert in_venv(settings, "greedy", "import tqdm; print(tqdm.__version__, tqdm.BOGUS)") == "0.0.1 True"
    assert layout_of(settings, "greedy").tree.read_lock()["python"]["base_overrides"] == [
        f"tqdm {tqdm.__version__} -> 0.0.1"]
    assert tqdm.__version__ != "0.0.1"  # the base environment itself is untouched


def test_a_requirement_that_cannot_be_installed_fails_and_leaves_nothing(world, settings):
    write_spec(settings.versions_dir, "unmet", (file_url(world.comfy), world.comfy_v1),
               nodes=[node(world)], requirements=["appliance-test-no-such-package==1.0"])
    with pytest.raises(AppError) as failed:
        install(spec_of(settings, "unmet"), settings)
    assert failed.value.code == "version_install_failed:unmet:requirements"
    assert "appliance-test-no-such-package" in failed.value.detail
    assert_nothing_half_built(settings, "unmet")


# ---- git faults --------------------------------------------------------------------------

@pytest.mark.parametrize("case,code", [
    ("comfy_commit", "version_install_failed:bad:comfyui_commit"),
    ("comfy_repo", "version_install_failed:bad:comfyui_fetch"),
    ("node_commit", "version_install_failed:bad:node_commit:hello"),
    ("node_repo", "version_install_failed:bad:node_fetch:hello"),
])
def test_git_faults_name_what_failed_and_leave_nothing(world, settings, tmp_path, case, code):
    missing_commit = "0123456789abcdef0123456789abcdef01234567"
    comfy = (file_url(world.comfy), missing_commit if case == "comfy_commit" else world.comfy_v1)
    if case == "comfy_repo":
        comfy = (file_url(tmp_path / "no-such-repo"), world.comfy_v1)
    hello = node(world)
    if case == "node_commit":
        hello["commit"] = missing_commit
    if case == "node_repo":
        hello["repo"] = str(tmp_path / "no-such-node")
    write_spec(settings.versions_dir, "bad", comfy, nodes=[hello])
    with pytest.raises(AppError) as failed:
        install(spec_of(settings, "bad"), settings)
    assert failed.value.code == code
    if case.endswith("commit"):
        assert missing_commit in failed.value.detail
    assert_nothing_half_built(settings, "bad")


def test_a_base_python_that_does_not_run_fails_the_venv_step(world, tmp_path):
    settings = world.settings(tmp_path, VERSIONS_BASE_PYTHON=str(tmp_path / "no-python"))
    write_spec(settings.versions_dir, "nobase", (file_url(world.comfy), world.comfy_v1))
    with pytest.raises(AppError) as failed:
        install(spec_of(settings, "nobase"), settings)
    assert failed.value.code == "version_install_failed:nobase:venv"
    assert "no-python" in failed.value.detail
    assert_nothing_half_built(settings, "nobase")


def test_a_versions_root_that_cannot_be_written_is_an_error_code_not_a_traceback(world, tmp_path):
    settings = world.settings(tmp_path, VERSIONS_ROOT=str(tmp_path / "a-file"))
    settings.versions_root.write_text("not a folder")
    write_spec(settings.versions_dir, "nowhere", (file_url(world.comfy), world.comfy_v1))
    with pytest.raises(AppError) as failed:
        install(spec_of(settings, "nowhere"), settings)
    assert failed.value.code == "version_install_failed:nowhere:filesystem"


@pytest.mark.parametrize("bad_id", ["a/b", "..", "../escape", "a/../b", ".hidden"])
def test_version_ids_with_slashes_or_dots_are_refused_before_any_path_is_made(world, settings, tmp_path, bad_id):
    with pytest.raises(AppError) as refused:
        spec_of(settings, bad_id)
    assert refused.value.prefix == "invalid_version_id"
    with pytest.raises(AppError) as refused:
        remove(bad_id, settings)
    assert refused.value.prefix == "invalid_version_id"
    proc = cli("install", bad_id, env=world.env(tmp_path))
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert json.loads(out)["error"].startswith("invalid_version_id:")
    assert not settings.versions_root.exists()


# ---- concurrency and crashes --------------------------------------------------------------

def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def stalled_index(server: LocalServer, wheels: Path, release: threading.Event) -> str:
    """A find-links page that answers only once `release` is set: pip waits on it meanwhile."""
    def page(req):
        release.wait(30)
        links = "".join(f'<a href="{w.name}">{w.name}</a>' for w in wheels.glob("*.whl"))
        send(req, 200, links.encode(), "text/html")

    server.route("/", page)
    for wheel in wheels.glob("*.whl"):
        server.route(f"/{wheel.name}", lambda req, data=wheel.read_bytes(): send(req, 200, data))
    return f"--no-index --find-links {server.url}/"


def test_two_installers_of_one_version_one_builds_the_other_waits_and_finds_it_done(world, settings, tmp_path):
    write_spec(settings.versions_dir, "raced", (file_url(world.comfy), world.comfy_v1), nodes=[node(world)])
    release = threading.Event()
    with LocalServer() as index:
        env = world.env(tmp_path, VERSIONS_PIP_ARGS=stalled_index(index, world.wheels, release))
        first = cli("install", "raced", env=env)
        wait_for(lambda: index.hits, what="the first installer to reach pip")
        second = cli("install", "raced", env=env)
        # The second installer says it waits for the lock; only then may the first finish.
        for line in second.stderr:
            if json.loads(line)["event"] == "version_lock_wait":
                break
        release.set()
        results = []
        for proc in (first, second):
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            results.append(json.loads(out))
    assert [r["built"] for r in results] == [True, False]
    assert results[1]["waited"] is True
    assert results[0]["custom_nodes"] == results[1]["custom_nodes"] == {"hello": world.node_v1}
    assert_no_build_leftovers(settings, "raced")


def test_an_installer_killed_mid_install_leaves_no_version_and_the_next_one_starts_clean(world, settings, tmp_path):
    write_spec(settings.versions_dir, "killed", (file_url(world.comfy), world.comfy_v1), nodes=[node(world)])
    layout = layout_of(settings, "killed")
    release = threading.Event()
    with LocalServer() as index:
        # pip waits on the index when the installer is killed: the install is half done.
        env = world.env(tmp_path, VERSIONS_PIP_ARGS=stalled_index(index, world.wheels, release))
        installer = cli("install", "killed", env=env)
        wait_for(lambda: index.hits, what="pip to ask the index")
        builds = list(layout.work_dir.iterdir())
        os.kill(installer.pid, signal.SIGKILL)
        installer.communicate(timeout=10)
        release.set()
    assert len(builds) == 1 and (builds[0] / "venv").is_dir()  # it was half-built
    assert not layout.tree.path.exists()
    # pip died with its parent instead of writing on into the folder the next install deletes.
    wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"])
                          if any(str(builds[0]) in part for part in p.info["cmdline"] or ())],
             timeout=5, what="pip to die with the installer")

    result = install(spec_of(settings, "killed"), settings)
    assert result.built and not builds[0].exists()
    assert state(spec_of(settings, "killed"), settings) == "installed"
    assert_no_build_leftovers(settings, "killed")


# ---- models, verify, list, remove ---------------------------------------------------------

MODEL = {"name": "tiny.safetensors", "type": "unet", "url": "https://example.invalid/tiny.safetensors", "size": 5}

def test_install_fetches_the_models_through_the_model_store(world, settings):
    import hashlib

    from tests.http_server import LocalServer, static

    data = b"tiny weights"
    settings = settings.replace(fetch_allow_hosts=("127.0.0.1",))  # the model server is on loopback
    with LocalServer() as server:
        good = server.route("/tiny.safetensors", static(data, content_type="application/octet-stream"))
        missing = server.url + "/gone.safetensors"
        model = {"name": "tiny.safetensors", "type": "unet", "url": good, "size": len(data),
                 "sha256": hashlib.sha256(data).hexdigest()}
        write_spec(settings.versions_dir, "modeled", (file_url(world.comfy), world.comfy_v1), models=[model])
        spec = spec_of(settings, "modeled")
        install(spec, settings, models=False)  # the environment only
        assert not (settings.comfy_cache_root / "models" / "diffusion_models" / "tiny.safetensors").exists()
        install(spec, settings)
        # `unet` is an alias: the model lives in the canonical diffusion_models folder.
        path = settings.comfy_cache_root / "models" / "diffusion_models" / "tiny.safetensors"
        assert path.read_bytes() == data
        assert verify(spec, settings)["ok"]

        broken = dict(model, name="gone.safetensors", url=missing, sha256="0" * 64)
        write_spec(settings.versions_dir, "broken", (file_url(world.comfy), world.comfy_v1), models=[broken])
        with pytest.raises(AppError) as failed:
            install(spec_of(settings, "broken"), settings)
    assert failed.value.code == "version_install_failed:broken:models"
    assert failed.value.extra["models"][0]["error"] == "download_failed:404"
    assert state(spec_of(settings, "broken"), settings) == "installed"  # only its models are missing


def test_verify_finds_every_kind_of_drift(world, settings):
    write_spec(settings.versions_dir, "drift", (file_url(world.comfy), world.comfy_v1), nodes=[node(world)])
    install(spec_of(settings, "drift"), settings)
    assert verify(spec_of(settings, "drift"), settings) == {"version_id": "drift", "ok": True, "problems": []}

    tree = layout_of(settings, "drift").tree
    (tree.comfy_dir / "main.py").write_text("# edited\n")
    git(tree.node_dir("hello"), "commit", "-q", "--allow-empty", "-m", "local change")
    site = next(tree.venv_dir.glob("lib/python*/site-packages"))
    for dist_info in site.glob("tinydep-*.dist-info"):
        os.rename(dist_info, site / "stray-2.0.dist-info")
        (site / "stray-2.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: stray\nVersion: 2.0\n")
    write_spec(settings.versions_dir, "drift", (file_url(world.comfy), world.comfy_v1), nodes=[node(world)],
               requirements=["aiohttp"], models=[MODEL])

    report = verify(spec_of(settings, "drift"), settings)
    found = {(p["part"], p["problem"]) for p in report["problems"]}
    assert not report["ok"]
    assert found == {("spec", "outdated"), ("comfyui", "modified"), ("node:hello", "commit"),
                     ("packages", "missing"), ("packages", "extra"), ("models", "missing")}


def test_list_shows_installed_available_outdated_orphaned_and_invalid_versions(world, settings, tmp_path):
    for version_id in ("done", "stale", "gone"):
        write_spec(settings.versions_dir, version_id, (file_url(world.comfy), world.comfy_v1))
        install(spec_of(settings, version_id), settings)
    write_spec(settings.versions_dir, "stale", (file_url(world.comfy), world.comfy_v2))
    (settings.versions_dir / "gone.json").unlink()
    write_spec(settings.versions_dir, "todo", (file_url(world.comfy), world.comfy_v2))
    (settings.versions_dir / "broken.json").write_text("{not json")

    rows = {row["id"]: row for row in list_versions(settings, SpecStore(settings.versions_dir))}
    assert {k: v["state"] for k, v in rows.items()} == {
        "broken": "invalid_spec", "done": "installed", "gone": "orphaned", "stale": "outdated", "todo": "available"}
    assert rows["done"]["comfyui"] == world.comfy_v1 and rows["todo"]["path"] is None
    assert not any(row["installing"] for row in rows.values())

    proc = cli("list", env=world.env(tmp_path))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [
        ["broken", "invalid_spec"], ["done", "installed"], ["gone", "orphaned"], ["stale", "outdated"],
        ["todo", "available"]]


def test_remove_deletes_the_version_and_a_second_remove_says_it_is_not_installed(world, settings, tmp_path):
    write_spec(settings.versions_dir, "bye", (file_url(world.comfy), world.comfy_v1))
    install(spec_of(settings, "bye"), settings)
    proc = cli("remove", "bye", env=world.env(tmp_path))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out)["removed"] == str(layout_of(settings, "bye").tree.path)
    assert state(spec_of(settings, "bye"), settings) == "available"
    assert_nothing_half_built(settings, "bye")
    with pytest.raises(AppError) as again:
        remove("bye", settings)
    assert again.value.code == "version_not_installed:bye"
