"""Attack table: a job never reads another job's files.

A victim job uploads `secret.png` and saves an output; it keeps them (JOB_FILES_RETENTION=3600),
so what stops every attack below is the check, not the clean-up. Every spelling in `SPELLINGS`,
put into every file input the ComfyUI offers (`LOADERS`), must be refused with
`forbidden_input:<node>` before ComfyUI sees the workflow (its history does not grow):
- in the runner against a ComfyUI (marker `comfy`: the stand-in, and with `make test-real` a
  real ComfyUI, which offers more loaders);
- through the Pod's real processes and the serverless handler (stand-in);
- as pure logic, for every file input recorded from a real ComfyUI 0.3.64 (plus LoadAudio).
`COMFY_LEAKS` shows why: ComfyUI itself (and the stand-in, which mimics it) serves another job's
file for each of them. The last tests check that job files are private (0700/0600) and removed.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import stat
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from services.comfy.client import ComfyClient
from services.config import Settings
from services.errors import AppError
from services.jobs.file_inputs import FileInputs, check_file_inputs
from services.jobs.job_files import JobFiles
from services.comfy.provider import FixedComfy
from services.jobs.runner import JobRunner
from services.versions.spec import SpecStore
from tests.pod_process import start_pod
from tests.standin_process import start_standin
from tests.test_serverless import Handler

FIXTURES = Path(__file__).parent / "fixtures" / "comfy"
VICTIM = "victimjob01"
SECRET_COLOR = (201, 13, 77)
OWN_COLOR = (10, 20, 30)

# What an attacking job puts into a file input. `{other}`: the victim's job id, `{input_dir}`:
# ComfyUI's input folder (absolute), `{self}`: a guess at the attacker's own id.
SPELLINGS = [
    ("parent folder", "../x.png"),
    ("parent folder into the victim's uploads", "../input/jobs/{other}/secret.png"),
    ("parent folder into the victim's outputs", "../output/jobs/{other}/out_00001_.png"),
    ("the victim's folder", "jobs/{other}/secret.png"),
    ("the victim's folder, [input]", "jobs/{other}/secret.png [input]"),
    ("the victim's output, [output]", "jobs/{other}/out_00001_.png [output]"),
    ("[output]", "secret.png [output]"),
    ("[temp] without a space", "x.png[temp]"),
    ("[temp]", "x.png [temp]"),
    ("own name with [input]", "own.png [input]"),
    ("absolute /etc/passwd", "/etc/passwd"),
    ("absolute path of the victim's upload", "{input_dir}/jobs/{other}/secret.png"),
    ("backslash parent", "..\\x.png"),
    ("backslashes into the victim's folder", "jobs\\{other}\\secret.png"),
    ("URL-encoded parent", "%2e%2e%2fx.png"),
    ("URL-encoded slashes", "jobs%2F{other}%2Fsecret.png"),
    ("NUL after the own name", "own.png\x00../x"),
    ("NUL at the end", "secret.png\x00"),
    ("newline after the own name", "own.png\n"),
    ("newline inside", "jobs/{other}\n/secret.png"),
    ("dot segment", "./jobs/{other}/secret.png"),
    ("double slash", "jobs//{other}/secret.png"),
    ("the victim's uploaded name", "secret.png"),
    ("own folder spelled out", "jobs/{self}/own.png"),
    ("the jobs folder itself", "jobs"),
    ("empty", ""),
    ("own name with a trailing space", "own.png "),
    ("a link from another node", ["9", 0]),
    ("a number", 7),
    ("list-valued widget hiding a parent", {"__value__": ["own.png", "../x.png"]}),
]

# File inputs an attack is tried in, when the ComfyUI under test has the node.
LOADERS = [("LoadImage", "image"), ("LoadImageMask", "image"), ("LoadImageOutput", "image"),
           ("LoadVideo", "file"), ("LoadAudio", "audio"), ("Load3D", "model_file"), ("LoadLatent", "latent")]

# What ComfyUI itself serves when asked directly: the victim's file, every time.
COMFY_LEAKS = [
    ("the victim's folder", "jobs/{other}/secret.png"),
    ("parent folder into the victim's uploads", "../input/jobs/{other}/secret.png"),
    ("the victim's output, [output]", "jobs/{other}/out_00001_.png [output]"),
    ("absolute path of the victim's upload", "{input_dir}/jobs/{other}/secret.png"),
]

# LoadAudio did not load where the fixture was recorded (no torchaudio); this is its INPUT_TYPES
# from ComfyUI 0.3.64's comfy_extras/nodes_audio.py, in /object_info form.
LOAD_AUDIO = {"LoadAudio": {"input": {"required": {"audio": [[], {"audio_upload": True}]}}}}


def png_b64(color) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def spelled(value, input_dir) -> object:
    if isinstance(value, str):
        return value.format(other=VICTIM, input_dir=input_dir, self="attacker")
    return value


def attack(class_type: str, input_name: str, value) -> dict:
    return {"workflow": {"1": {"class_type": class_type, "inputs": {input_name: value}},
                         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "stolen"}}},
            "images": [{"name": "own.png", "image": png_b64(OWN_COLOR)}]}


def load_invert_save(name: str, prefix: str) -> dict:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}


VICTIM_PAYLOAD = {"workflow": load_invert_save("secret.png", "out"),
                  "images": [{"name": "secret.png", "image": png_b64(SECRET_COLOR)}]}


def first_pixel(b64: str):
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB").getpixel((0, 0))


def inverted(color):
    return tuple(255 - c for c in color)


def near(pixel, color) -> bool:
    # A real ComfyUI inverts in float32 and rounds down: one off is the same colour.
    return all(abs(a - b) <= 1 for a, b in zip(pixel, color))


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def assert_private(folder: Path) -> None:
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700  # jobs/
    for dirpath, _, filenames in os.walk(folder):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
        for name in filenames:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode) == 0o600, name


# ---- the rule itself, for every recorded file input -------------------------------------------

def recorded_file_inputs() -> FileInputs:
    info = json.loads((FIXTURES / "object_info_file_inputs.json").read_text())
    return FileInputs.from_object_info({**info, **LOAD_AUDIO})


def test_file_inputs_come_from_object_info():
    inputs = recorded_file_inputs().by_class
    assert {(c, n) for c, names in inputs.items() for n in names} == {
        ("LoadImage", "image"), ("LoadImageMask", "image"), ("LoadImageOutput", "image"), ("LoadVideo", "file"),
        ("LoadAudio", "audio"), ("Load3D", "model_file"), ("Load3DAnimation", "model_file"), ("LoadLatent", "latent"),
        ("LoadImageSetFromFolderNode", "folder"), ("LoadImageTextSetFromFolderNode", "folder"),
        ("WebcamCapture", "image"), ("GeminiInputFiles", "file"), ("OpenAIInputFiles", "file")}
    assert "CheckpointLoaderSimple" not in inputs  # models are not job files


@pytest.mark.parametrize("label,value", SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_every_spelling_is_refused_in_every_recorded_file_input(label, value):
    inputs = recorded_file_inputs()
    tried = 0
    for class_type, names in inputs.by_class.items():
        for name in names:
            workflow = {"7": {"class_type": class_type, "inputs": {name: spelled(value, "/srv/comfy/input")}}}
            with pytest.raises(AppError) as err:
                check_file_inputs(workflow, inputs, {"own.png"})
            assert err.value.code == "forbidden_input:7" and err.value.status == 400
            tried += 1
    assert tried == 13


def test_own_images_and_shipped_files_pass_and_shipped_names_never_reach_job_folders():
    info = {"LoadImage": {"input": {"required": {"image": [
        ["example.png", "3d/model.glb", "jobs/abc/x.png", "../x.png", "x.png [output]", "/etc/passwd"],
        {"image_upload": True}]}}}}
    inputs = FileInputs.from_object_info(info)
    assert inputs.by_class["LoadImage"]["image"] == {"example.png", "3d/model.glb"}
    for name in ("own.png", "example.png", "3d/model.glb"):
        check_file_inputs({"1": {"class_type": "LoadImage", "inputs": {"image": name}}}, inputs, {"own.png"})
    with pytest.raises(AppError):
        check_file_inputs({"1": {"class_type": "LoadImage", "inputs": {"image": "jobs/abc/x.png"}}}, inputs, set())


# ---- ComfyUI itself does not isolate: the stand-in is faithful here ---------------------------

def runner_settings(comfy, **env) -> Settings:
    return Settings.from_env({"DEFAULT_VERSION_ID": "demo", "COMFY_IO_DIR": str(comfy.base_dir),
                              "LOG_LEVEL": "warning", **env})


async def run_each(comfy, payloads, env=None) -> list:
    """Run (job_id, payload) pairs one after another with one runner; results or AppErrors."""
    settings = runner_settings(comfy, **(env or {}))
    client = ComfyClient(comfy.url)
    runner = JobRunner(settings, SpecStore(settings.versions_dir), FixedComfy(client))
    answers = []
    try:
        for job_id, payload in payloads:
            try:
                answers.append(await runner.run(payload, job_id=job_id))
            except AppError as exc:
                answers.append(exc)
    finally:
        await runner.close()
        await client.close()
    return answers


@pytest.fixture(scope="module")
def victim(comfy):
    """The victim job ran and kept its files (retention): upload and output are on disk."""
    (result,) = asyncio.run(run_each(comfy, [(VICTIM, VICTIM_PAYLOAD)], {"JOB_FILES_RETENTION": "3600"}))
    assert not isinstance(result, AppError), result
    assert near(first_pixel(result["base64"]), inverted(SECRET_COLOR))
    upload = comfy.input_dir / "jobs" / VICTIM / "secret.png"
    output = comfy.output_dir / "jobs" / VICTIM / "out_00001_.png"
    assert upload.is_file() and output.is_file()
    return upload, output


@pytest.mark.comfy
def test_victim_files_are_private_while_kept(comfy, victim):
    for path in victim:
        assert_private(path.parent)


@pytest.mark.comfy
@pytest.mark.parametrize("label,value", COMFY_LEAKS, ids=[s[0] for s in COMFY_LEAKS])
def test_comfyui_itself_serves_another_jobs_file(comfy, victim, label, value):
    """Asked directly, ComfyUI loads the victim's file: only the appliance's check stops it."""
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": spelled(value, comfy.input_dir)}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "direct"}}}

    async def go():
        client = ComfyClient(comfy.url)
        try:
            outcome = await client.wait(await client.submit(prompt))
            return await client.view(**outcome.files[0].view_params)
        finally:
            await client.close()
    leaked = Image.open(io.BytesIO(asyncio.run(go()))).convert("RGB").getpixel((0, 0))
    assert near(leaked, SECRET_COLOR) or near(leaked, inverted(SECRET_COLOR))


# ---- the appliance refuses them before ComfyUI ------------------------------------------------

@pytest.mark.comfy
def test_every_spelling_in_every_loader_is_refused_before_comfyui(comfy, victim):
    offered = get_json(comfy.url + "/object_info")
    loaders = [(c, n) for c, n in LOADERS if c in offered]
    before = get_json(comfy.url + "/history")
    cases = [(label, c, n, spelled(v, comfy.input_dir)) for label, v in SPELLINGS for c, n in loaders]
    answers = asyncio.run(run_each(comfy, [(f"attacker{i}", attack(c, n, v)) for i, (_, c, n, v) in enumerate(cases)]))
    wrong = [(label, c, a) for (label, c, _, _), a in zip(cases, answers)
             if not (isinstance(a, AppError) and a.code == "forbidden_input:1")]
    assert not wrong
    assert get_json(comfy.url + "/history") == before  # not one of them reached ComfyUI
    assert len(cases) == len(SPELLINGS) * len(loaders)


@pytest.mark.comfy
def test_own_images_and_shipped_files_still_load(comfy, victim):
    shipped = comfy.input_dir / "shipped.png"
    shipped.write_bytes(base64.b64decode(png_b64((1, 2, 3))))
    own, ships = asyncio.run(run_each(comfy, [
        ("ownjob", {"workflow": load_invert_save("own.png", "own"), "images": [{"name": "own.png", "image": png_b64(OWN_COLOR)}]}),
        ("shipsjob", {"workflow": load_invert_save("shipped.png", "ships")}),
    ]))
    assert near(first_pixel(own["base64"]), inverted(OWN_COLOR))
    assert near(first_pixel(ships["base64"]), inverted((1, 2, 3)))


@pytest.mark.comfy
def test_job_files_are_removed_once_delivered_or_failed(comfy):
    failing = {"workflow": {"1": {"class_type": "LoadImage", "inputs": {"image": "own.png"}}},  # no output node
               "images": [{"name": "own.png", "image": png_b64(OWN_COLOR)}]}
    ok, failed = asyncio.run(run_each(comfy, [
        ("gonejob", {"workflow": load_invert_save("own.png", "gone"), "images": [{"name": "own.png", "image": png_b64(OWN_COLOR)}]}),
        ("failjob", failing)]))
    assert near(first_pixel(ok["base64"]), inverted(OWN_COLOR)) and isinstance(failed, AppError)
    for job_id in ("gonejob", "failjob"):
        assert not (comfy.input_dir / "jobs" / job_id).exists()
        assert not (comfy.output_dir / "jobs" / job_id).exists()


def test_sweep_removes_only_folders_no_job_can_still_use(tmp_path):
    files = JobFiles(tmp_path, retention=60, job_timeout=100)
    for root in ("input", "output"):
        (tmp_path / root).mkdir()
    for job_id in ("old", "young"):
        files.prepare(job_id)
        (tmp_path / "input" / "jobs" / job_id / "a.png").write_bytes(b"x")
    old = time.time() - files.horizon - 5
    for path in (tmp_path / "input" / "jobs" / "old", tmp_path / "input" / "jobs" / "old" / "a.png",
                 tmp_path / "output" / "jobs" / "old"):
        os.utime(path, (old, old))
    assert sorted(files.sweep()) == ["old", "old"]
    assert not (tmp_path / "input" / "jobs" / "old").exists()
    assert (tmp_path / "input" / "jobs" / "young" / "a.png").exists()


# ---- through the real Pod processes and the serverless handler --------------------------------

@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    pod = start_pod(tmp_path_factory.mktemp("pod-isolation"), env={"JOB_FILES_RETENTION": "3600"})
    yield pod
    pod.stop()


def test_pod_refuses_every_spelling_and_keeps_job_files_private(pod):
    status, result = pod.request("POST", "/run", {**VICTIM_PAYLOAD, "job_id": VICTIM})
    assert status == 200 and near(first_pixel(result["base64"]), inverted(SECRET_COLOR))
    io_dir = pod.root / "data" / "comfy"
    for path in (io_dir / "input" / "jobs" / VICTIM, io_dir / "output" / "jobs" / VICTIM):
        assert_private(path)
    comfy_history = f"http://127.0.0.1:{pod.comfy_port}/history"
    before = get_json(comfy_history)
    refused = 0
    for i, (label, value) in enumerate(SPELLINGS):
        body = {**attack("LoadImage", "image", spelled(value, io_dir / "input")), "job_id": f"attacker{i}"}
        status, answer = pod.request("POST", "/run", body)
        assert (status, answer["error"]) == (400, "forbidden_input:1"), (label, answer)
        assert pod.request("GET", f"/jobs/attacker{i}")[1]["state"] == "failed"
        refused += 1
    assert refused == len(SPELLINGS)
    assert get_json(comfy_history) == before


@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    h = Handler(tmp_path_factory.mktemp("serverless-isolation"), env={"JOB_FILES_RETENTION": "3600"})
    yield h
    h.stop()


def test_serverless_refuses_every_spelling(handler):
    victim = handler.runsync(VICTIM_PAYLOAD)
    assert victim["status"] == "COMPLETED", victim
    victim_id = victim["output"]["job_id"]
    input_dir = Path(handler.env["DATA_ROOT"]) / "comfy" / "input"
    assert (input_dir / "jobs" / victim_id / "secret.png").is_file()
    refused = 0
    for label, value in SPELLINGS:
        value = value.replace("{other}", victim_id) if isinstance(value, str) else value
        answer = handler.runsync(attack("LoadImage", "image", spelled(value, input_dir)))
        assert answer["status"] == "FAILED" and answer["error"].startswith("forbidden_input:1: "), (label, answer)
        refused += 1
    assert refused == len(SPELLINGS)


def test_file_inputs_are_read_once_per_comfyui_start(tmp_path):
    """A restarted ComfyUI (another version, new custom nodes, new shipped files) is asked again."""
    first = start_standin(tmp_path / "a")
    port = first.port

    async def go():
        client = ComfyClient(first.url)
        try:
            info = await client.object_info_once()
            assert await client.object_info_once() is info  # cached while the same ComfyUI runs
            first.stop()
            (tmp_path / "b" / "comfy" / "input").mkdir(parents=True)
            (tmp_path / "b" / "comfy" / "input" / "new.png").write_bytes(base64.b64decode(png_b64((0, 0, 0))))
            second = start_standin(tmp_path / "b", port=port)
            try:
                deadline = time.monotonic() + 10
                while "new.png" not in (await client.object_info_once())["LoadImage"]["input"]["required"]["image"][0]:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
            finally:
                second.stop()
        finally:
            await client.close()
            first.stop()
    asyncio.run(go())
