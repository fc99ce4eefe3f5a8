"""Contract test: the ComfyUI stand-in answers like the real ComfyUI recorded in tests/fixtures/comfy.

Each recording's request is replayed against a stand-in process and the answer compared:
status, content type, the same JSON keys and value types at every level, the exact
sequence of websocket message types with the same `data` keys, and the values that are
deterministic (errors, node_errors, output names). Ids, timestamps and paths are not.
Most tests share one stand-in; tests that kill it, fill its queue or need other flags
start their own.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.comfy_standin.prompt_queue import MAX_HISTORY, PromptQueue, QueueItem
from tests.standin_process import (REPO_ROOT, StandinProcess, free_port, standin_command, standin_env,
                                   start_standin, write_fake_comfy_home)

FIXTURES = Path(__file__).parent / "fixtures" / "comfy"
JSON_TYPE = "application/json; charset=utf-8"
TIMEOUT = 15

pytestmark = pytest.mark.timeout(60)


def recording(name: str):
    return json.loads((FIXTURES / name).read_text())


# --- comparing with recordings ---------------------------------------------------------

def assert_same_shape(recorded, actual, path: str = "$") -> None:
    """Same dict keys at every level and same value types (bool, int, float, str, None differ).

    Lists of equal length are compared item by item; otherwise every actual item must
    have the shape of the first recorded one (e.g. tracebacks of another length).
    """
    if isinstance(recorded, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        assert set(actual) == set(recorded), f"{path}: keys {sorted(actual)} != recorded {sorted(recorded)}"
        for key in recorded:
            assert_same_shape(recorded[key], actual[key], f"{path}.{key}")
    elif isinstance(recorded, list):
        assert isinstance(actual, list), f"{path}: expected a list, got {actual!r}"
        if len(recorded) == len(actual):
            for index, (rec, act) in enumerate(zip(recorded, actual)):
                assert_same_shape(rec, act, f"{path}[{index}]")
        elif recorded:
            for index, act in enumerate(actual):
                assert_same_shape(recorded[0], act, f"{path}[{index}]")
    else:
        assert type(actual) is type(recorded), f"{path}: {actual!r} is not a {type(recorded).__name__}"


def recorded_messages(ws_recording: list) -> list[dict]:
    """Recordings store frames as {"msg": ...}, {"data": ...} or bare messages."""
    return [frame.get("msg") or (frame["data"] if "kind" in frame else frame) for frame in ws_recording]


def types(messages: list[dict]) -> list[str]:
    return [m["type"] for m in messages]


def assert_same_messages(recorded: list[dict], actual: list[dict]) -> None:
    assert types(actual) == types(recorded)
    for index, (rec, act) in enumerate(zip(recorded, actual)):
        assert_same_shape(rec["data"], act["data"], f"ws[{index}]<{rec['type']}>")


def without_tracebacks(value):
    """Tracebacks name this process's files; only check that they are lists of strings."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "traceback":
                assert isinstance(item, list) and item and all(isinstance(line, str) for line in item)
                item = "<traceback>"
            out[key] = without_tracebacks(item)
        return out
    if isinstance(value, list):
        return [without_tracebacks(item) for item in value]
    return value


# --- talking to a stand-in -------------------------------------------------------------

@dataclass
class Run:
    response: requests.Response
    prompt_id: str
    messages: list[dict]
    history: dict


@contextmanager
def websocket(standin: StandinProcess, client_id: str):
    with connect(f"{standin.ws_url}?clientId={client_id}", open_timeout=TIMEOUT) as ws:
        yield ws


def receive(ws, timeout: float = TIMEOUT) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def receive_until_done(ws, prompt_id: str) -> list[dict]:
    """Messages up to and including the final `executing` with node null."""
    messages = []
    while True:
        message = receive(ws)
        messages.append(message)
        data = message["data"]
        if message["type"] == "executing" and data["node"] is None and data["prompt_id"] == prompt_id:
            return messages


def receive_until(ws, event: str) -> list[dict]:
    messages = [receive(ws)]
    while messages[-1]["type"] != event:
        messages.append(receive(ws))
    return messages


def submit(standin: StandinProcess, body: dict) -> str:
    response = requests.post(standin.url + "/prompt", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


def history_of(standin: StandinProcess, prompt_id: str) -> dict:
    return requests.get(f"{standin.url}/history/{prompt_id}", timeout=TIMEOUT).json()[prompt_id]


def run_prompt(standin: StandinProcess, request: dict) -> Run:
    """Submit like a client does: open the websocket first, then POST with its client_id."""
    client_id = str(uuid.uuid4())
    with websocket(standin, client_id) as ws:
        messages = [receive(ws)]
        response = requests.post(standin.url + "/prompt", json={**request, "client_id": client_id},
                                 timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        prompt_id = response.json()["prompt_id"]
        messages += receive_until_done(ws, prompt_id)
    return Run(response, prompt_id, messages, history_of(standin, prompt_id))


def forget_cache(standin: StandinProcess) -> None:
    """Make the next run execute every node, as the recordings' first runs did."""
    assert requests.post(standin.url + "/free", json={"free_memory": True}, timeout=TIMEOUT).status_code == 200


def png_bytes(color, size=(16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


PROBE_PNG = png_bytes((10, 200, 30))


def upload(standin: StandinProcess, name: str, content: bytes, **fields) -> requests.Response:
    return requests.post(standin.url + "/upload/image", files={"image": (name, content, "image/png")},
                         data=fields, timeout=TIMEOUT)


def sleep_prompt(seconds: float, steps: int) -> dict:
    return {"1": {"class_type": "StandinSleep", "inputs": {"seconds": seconds, "steps": steps}}}


def image_prompt(prefix: str, color: int, size: int = 16) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """One stand-in for most tests, holding the files the recorded ComfyUI had."""
    process = start_standin(tmp_path_factory.mktemp("shared"))
    (process.input_dir / "example.png").write_bytes(png_bytes((0, 0, 0)))
    checkpoints = process.models_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "random_sd15.safetensors").write_bytes(b"not really a model")
    yield process
    assert process.stop() == 0, process.log()


# --- runs ------------------------------------------------------------------------------

def test_fresh_run_then_cached_rerun_match_recordings(standin):
    fresh, cached = recording("fresh_run.json"), recording("cached_rerun.json")
    forget_cache(standin)
    started = time.monotonic()
    run = run_prompt(standin, fresh["request"])
    assert time.monotonic() - started < 5

    assert run.response.headers["Content-Type"] == JSON_TYPE
    assert_same_shape(fresh["prompt_response"]["body"], run.response.json())
    assert run.response.json()["node_errors"] == {}
    assert_same_messages(recorded_messages(fresh["ws"]), run.messages)
    assert_same_shape(fresh["history"][fresh["prompt_response"]["body"]["prompt_id"]], run.history)
    assert run.history["outputs"] == {"2": {"images": [{"filename": "fresh_00001_.png", "subfolder": "", "type": "output"}]}}
    assert run.history["status"]["status_str"] == "success" and run.history["status"]["completed"] is True
    files_before = sorted(p.name for p in standin.output_dir.glob("fresh*"))
    assert files_before == ["fresh_00001_.png"]

    rerun = run_prompt(standin, cached["request"])
    assert rerun.response.json()["number"] == run.response.json()["number"] + 1
    assert_same_messages(recorded_messages(cached["ws"]), rerun.messages)
    assert_same_messages(recorded_messages(recording("ok_ws_messages.json")), rerun.messages)
    by_type = {m["type"]: m["data"] for m in rerun.messages}
    assert by_type["execution_cached"]["nodes"] == ["1", "2"]
    assert by_type["progress_state"]["nodes"]["2"]["value"] == 1  # an int, as recorded
    assert rerun.history["outputs"] == run.history["outputs"]
    assert_same_shape(cached["history"][cached["prompt_response"]["body"]["prompt_id"]], rerun.history)
    assert sorted(p.name for p in standin.output_dir.glob("fresh*")) == files_before


def test_view_serves_a_saved_image_like_recording(standin):
    run_prompt(standin, {"prompt": image_prompt("viewed", 0x112233)})
    recorded = recording("ok_view_result.json")
    query = {**recorded["query"], "filename": "viewed_00001_.png"}
    response = requests.get(standin.url + "/view", params=query, timeout=TIMEOUT)
    assert response.status_code == recorded["http_status"]
    assert response.headers["Content-Type"] == recorded["content_type"]
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert Image.open(io.BytesIO(response.content)).getpixel((0, 0)) == (0x11, 0x22, 0x33)

    preview = requests.get(standin.url + "/view", params={**query, "preview": "webp;50"}, timeout=TIMEOUT)
    assert (preview.status_code, preview.headers["Content-Type"]) == (200, "image/webp")
    for channel in ("rgb", "a"):
        picked = requests.get(standin.url + "/view", params={**query, "channel": channel}, timeout=TIMEOUT)
        assert (picked.status_code, picked.headers["Content-Type"]) == (200, "image/png")


def test_animated_and_preview_run_match_recording(standin):
    recorded = recording("animated_and_preview_run.json")
    forget_cache(standin)
    run = run_prompt(standin, recorded["request"])
    assert_same_messages(recorded_messages(recorded["ws"]), run.messages)
    assert_same_shape(next(iter(recorded["history"].values())), run.history)

    outputs = run.history["outputs"]
    assert outputs["2"] == {"images": [{"filename": "anim_00001_.webp", "subfolder": "", "type": "output"}],
                            "animated": [True]}
    previews = outputs["3"]["images"]
    assert [p["type"] for p in previews] == ["temp"] * 3
    assert all(re.fullmatch(r"ComfyUI_temp_[a-z]{5}_0000[123]_\.png", p["filename"]) for p in previews)
    with Image.open(standin.output_dir / "anim_00001_.webp") as webp:
        # libwebp merges the three identical frames, as it does for the real ComfyUI.
        assert (webp.format, webp.size) == ("WEBP", (32, 32))
    view = requests.get(standin.url + "/view", params=previews[0], timeout=TIMEOUT)
    assert (view.status_code, view.headers["Content-Type"]) == (200, "image/png")


def test_upload_then_loadimage_run_match_recordings(standin):
    answer = upload(standin, "input_probe.png", PROBE_PNG)
    recorded_upload = recording("upload_image.json")
    assert answer.status_code == recorded_upload["http_status"]
    assert answer.headers["Content-Type"] == JSON_TYPE
    assert answer.json() == recorded_upload["body"]

    recorded = recording("loadimage_run.json")
    forget_cache(standin)
    run = run_prompt(standin, recorded["request"])
    assert_same_messages(recorded_messages(recorded["ws"]), run.messages)
    assert_same_shape(next(iter(recorded["history"].values())), run.history)
    assert run.history["outputs"] == {"3": {"images": [{"filename": "inverted_00001_.png", "subfolder": "", "type": "output"}]}}
    with Image.open(standin.output_dir / "inverted_00001_.png") as inverted:
        assert inverted.getpixel((0, 0)) == (245, 55, 225)


def test_upload_renames_only_different_content(standin):
    # In a subfolder, so that LoadImage's list of input files stays as recorded.
    name, folder = "rename_probe.png", {"subfolder": "renames"}
    assert upload(standin, name, PROBE_PNG, **folder).json() == {"name": name, "subfolder": "renames", "type": "input"}
    assert upload(standin, name, PROBE_PNG, **folder).json()["name"] == name
    assert upload(standin, name, png_bytes((1, 2, 3)), **folder).json()["name"] == "rename_probe (1).png"
    assert upload(standin, name, png_bytes((4, 5, 6)), **folder).json()["name"] == "rename_probe (2).png"
    assert upload(standin, name, png_bytes((1, 2, 3)), **folder).json()["name"] == "rename_probe (1).png"
    assert upload(standin, name, png_bytes((7, 8, 9)), overwrite="true", **folder).json()["name"] == name
    assert (standin.input_dir / "renames" / name).read_bytes() == png_bytes((7, 8, 9))

    answer = upload(standin, "nested.png", PROBE_PNG, subfolder="sub", type="temp")
    assert answer.json() == {"name": "nested.png", "subfolder": "sub", "type": "temp"}
    view = requests.get(standin.url + "/view", params={"filename": "nested.png", "subfolder": "sub", "type": "temp"},
                        timeout=TIMEOUT)
    assert view.content == PROBE_PNG
    assert upload(standin, "x.png", PROBE_PNG, subfolder="../..").status_code == 400
    assert upload(standin, "x.png", PROBE_PNG, type="nope").status_code == 500


def test_txt2img_run_matches_recording(standin):
    recorded = recording("txt2img_ws_and_history.json")
    forget_cache(standin)
    run = run_prompt(standin, {"prompt": recording("txt2img_random_sd15_prompt.json")})
    # That recording starts after the connect and leaves out progress_state messages.
    messages = [m for m in run.messages[1:] if m["type"] != "progress_state"]
    assert_same_messages(recorded_messages(recorded["ws"]), messages)
    assert_same_shape(recorded["history"], run.history)
    assert run.history["outputs"]["9"]["images"][0]["filename"] == "rand_sd15_00001_.png"
    with Image.open(standin.output_dir / "rand_sd15_00001_.png") as image:
        assert image.size == (64, 64)


def test_execution_error_matches_recording(standin):
    recorded = recording("exec_error_ws_messages.json")
    forget_cache(standin)
    run = run_prompt(standin, recorded["request"])
    # That recording starts after the connect.
    assert_same_messages(recorded_messages(recorded["ws"]), run.messages[1:])
    error = next(m["data"] for m in run.messages if m["type"] == "execution_error")
    recorded_error = next(m["data"] for m in recorded["ws"] if m["type"] == "execution_error")
    for key in ("node_id", "node_type", "executed", "exception_type", "current_outputs"):
        assert error[key] == recorded_error[key]
    assert list(error["current_inputs"]) == list(recorded_error["current_inputs"])
    assert error["current_inputs"]["filename_prefix"] == ["../../escape"]
    assert error["exception_message"].startswith(
        "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: ")
    assert error["exception_message"].endswith("\n")

    recorded_history = next(iter(recording("exec_error_history_entry.json").values()))
    assert_same_shape(recorded_history, run.history)
    assert run.history["status"]["status_str"] == "error" and run.history["status"]["completed"] is False
    assert run.history["outputs"] == {} and run.history["meta"] == {}
    assert types([{"type": t} for t, _ in run.history["status"]["messages"]]) == [
        "execution_start", "execution_cached", "execution_error"]


def test_standin_raise_ends_in_execution_error(standin):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 77}},
        "2": {"class_type": "StandinRaise", "inputs": {"message": "boom", "images": ["1", 0]}},
    }
    run = run_prompt(standin, {"prompt": prompt})
    assert types(run.messages)[-3:] == ["execution_error", "status", "executing"]
    error = run.messages[-3]["data"]
    recorded_error = next(m["data"] for m in recording("exec_error_ws_messages.json")["ws"]
                          if m["type"] == "execution_error")
    assert set(error) == set(recorded_error)
    assert (error["node_id"], error["node_type"], error["executed"]) == ("2", "StandinRaise", ["1"])
    assert (error["exception_type"], error["exception_message"]) == ("RuntimeError", "boom\n")
    assert error["current_inputs"]["message"] == ["boom"]
    assert error["current_inputs"]["images"][0].startswith("tensor(")
    assert run.history["status"]["status_str"] == "error"
    assert run.history["status"]["messages"][-1][0] == "execution_error"


def test_partly_changed_prompt_reruns_only_changed_nodes(standin):
    first = run_prompt(standin, {"prompt": image_prompt("partial_a", 0x010203)})
    assert first.history["outputs"]["2"]["images"][0]["filename"] == "partial_a_00001_.png"

    changed_prefix = run_prompt(standin, {"prompt": image_prompt("partial_b", 0x010203)})
    by_type = {m["type"]: m["data"] for m in changed_prefix.messages}
    assert by_type["execution_cached"]["nodes"] == ["1"]
    assert [m["data"]["node"] for m in changed_prefix.messages if m["type"] == "executing"] == ["2", None]

    changed_color = run_prompt(standin, {"prompt": image_prompt("partial_b", 0x040506)})
    assert {m["type"]: m["data"] for m in changed_color.messages}["execution_cached"]["nodes"] == []
    assert changed_color.history["outputs"]["2"]["images"][0]["filename"] == "partial_b_00002_.png"

    # The cache key is the graph, not the node ids.
    renumbered = {"10": image_prompt("partial_b", 0x040506)["1"],
                  "20": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "partial_b"}}}
    again = run_prompt(standin, {"prompt": renumbered})
    assert {m["type"]: m["data"] for m in again.messages}["execution_cached"]["nodes"] == ["10", "20"]
    assert again.history["outputs"]["20"] == changed_color.history["outputs"]["2"]


def test_save_image_names_continue_after_the_highest_counter(standin):
    folder = standin.output_dir / "named"
    folder.mkdir()
    (folder / "shot_00007_.png").write_bytes(b"")
    (folder / "shot_notes.txt").write_bytes(b"")
    prompt = image_prompt("named/shot", 0x203040)
    prompt["1"]["inputs"]["batch_size"] = 2
    run = run_prompt(standin, {"prompt": prompt})
    assert run.history["outputs"]["2"]["images"] == [
        {"filename": "shot_00008_.png", "subfolder": "named", "type": "output"},
        {"filename": "shot_00009_.png", "subfolder": "named", "type": "output"},
    ]
    with Image.open(folder / "shot_00008_.png") as saved:
        assert json.loads(saved.info["prompt"]) == prompt


def test_prompt_without_client_id_runs_without_per_prompt_events(standin):
    with websocket(standin, str(uuid.uuid4())) as ws:
        receive(ws)
        prompt_id = submit(standin, {"prompt": image_prompt("silent", 0x0F0F0F)})
        deadline = time.monotonic() + TIMEOUT
        while not requests.get(f"{standin.url}/history/{prompt_id}", timeout=TIMEOUT).json():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert set(types(_drain(ws))) == {"status"}
    assert history_of(standin, prompt_id)["status"]["status_str"] == "success"


def test_feature_flags_handshake(standin):
    with websocket(standin, str(uuid.uuid4())) as ws:
        receive(ws)
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        assert receive(ws) == {"type": "feature_flags",
                               "data": {"supports_preview_metadata": True, "max_upload_size": 100 * 1024 * 1024}}


def test_free_memory_empties_the_cache(standin):
    prompt = image_prompt("freed", 0x0A0B0C)
    run_prompt(standin, {"prompt": prompt})
    forget_cache(standin)
    rerun = run_prompt(standin, {"prompt": prompt})
    assert {m["type"]: m["data"] for m in rerun.messages}["execution_cached"]["nodes"] == []
    assert sorted(p.name for p in standin.output_dir.glob("freed_*")) == ["freed_00001_.png", "freed_00002_.png"]


def test_interrupt_mid_sleep_matches_interrupted_recording(standin):
    recorded = recording("interrupted_run.json")
    client_id = str(uuid.uuid4())
    with websocket(standin, client_id) as ws:
        receive(ws)
        prompt_id = submit(standin, {"prompt": sleep_prompt(20, 200), "client_id": client_id})
        receive_until(ws, "progress")

        queue = requests.get(standin.url + "/queue", timeout=TIMEOUT).json()
        assert set(queue) == set(recorded["queue_mid_run"]) and queue["queue_pending"] == []
        [entry] = queue["queue_running"]
        assert [type(part) for part in entry] == [type(part) for part in recorded["queue_mid_run"]["queue_running"][0]]
        assert entry[1:] == [prompt_id, sleep_prompt(20, 200), {"client_id": client_id}, ["1"]]
        assert requests.get(standin.url + "/prompt", timeout=TIMEOUT).json() == recorded["get_prompt_mid_run"]

        # Naming another prompt is a no-op: the sleep keeps reporting progress.
        other = requests.post(standin.url + "/interrupt", json={"prompt_id": str(uuid.uuid4())}, timeout=TIMEOUT)
        assert other.status_code == 200
        receive_until(ws, "progress")

        answer = requests.post(standin.url + "/interrupt", json={"prompt_id": prompt_id}, timeout=TIMEOUT)
        assert (answer.status_code, answer.text) == (recorded["interrupt"]["http_status"], recorded["interrupt"]["body"])
        tail = [m for m in receive_until_done(ws, prompt_id) if m["type"] not in ("progress", "progress_state")]

    recorded_tail = recorded_messages(recorded["ws"])[-3:]
    assert_same_messages(recorded_tail, tail)
    assert tail[0]["data"]["node_id"] == "1" and tail[0]["data"]["node_type"] == "StandinSleep"
    assert tail[0]["data"]["executed"] == []
    history = history_of(standin, prompt_id)
    recorded_history = next(iter(recorded["history"].values()))
    assert_same_shape(recorded_history["status"], history["status"])
    assert (history["status"]["status_str"], history["status"]["completed"]) == ("error", False)
    assert history["outputs"] == {} and history["meta"] == {}
    assert [event for event, _ in history["status"]["messages"]] == [
        "execution_start", "execution_cached", "execution_interrupted"]


def test_concurrent_clients_get_only_their_own_events(standin):
    ids = [str(uuid.uuid4()) for _ in range(2)]
    with websocket(standin, ids[0]) as ws_a, websocket(standin, ids[1]) as ws_b:
        receive(ws_a), receive(ws_b)
        prompt_a = submit(standin, {"prompt": sleep_prompt(0.3, 3), "client_id": ids[0]})
        prompt_b = submit(standin, {"prompt": sleep_prompt(0.31, 3), "client_id": ids[1]})
        seen_a = receive_until_done(ws_a, prompt_a)
        seen_b = receive_until_done(ws_b, prompt_b)
        seen_a += _drain(ws_a)

    for seen, own in ((seen_a, prompt_a), (seen_b, prompt_b)):
        assert {m["data"]["prompt_id"] for m in seen if "prompt_id" in m["data"]} == {own}
        assert "execution_success" in types(seen) and types(seen).count("progress") == 3
    # Queue status is broadcast to everyone, so A also hears about B's prompt being queued.
    assert types(seen_a).count("status") >= 4


def _drain(ws, quiet: float = 0.3) -> list[dict]:
    messages = []
    try:
        while True:
            messages.append(receive(ws, timeout=quiet))
    except TimeoutError:
        return messages


def test_reconnect_with_same_client_id_replaces_the_socket(standin):
    client_id = str(uuid.uuid4())
    with websocket(standin, client_id) as old, websocket(standin, client_id) as new:
        receive(old), receive(new)
        prompt_id = submit(standin, {"prompt": sleep_prompt(0.6, 6), "client_id": client_id})
        receive_until(new, "progress")
        with websocket(standin, client_id) as third:
            assert receive(third)["type"] == "status"
            # A client reconnecting mid-run is told which node is running.
            assert receive_until(third, "executing")[-1] == {"type": "executing", "data": {"node": "1"}}
            receive_until_done(third, prompt_id)
        assert _drain(old, quiet=0.2) == []


# --- validation ------------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "err_bad_link.json", "err_bad_value.json", "err_loadimage_traversal.json",
    "err_missing_input.json", "err_no_output_node.json", "err_unknown_class_type.json",
])
def test_validation_error_matches_recording(standin, name):
    recorded = recording(name)
    response = requests.post(standin.url + "/prompt", json=recorded["request"], timeout=TIMEOUT)
    assert response.status_code == recorded["http_status"]
    assert response.headers["Content-Type"] == JSON_TYPE
    assert without_tracebacks(response.json()) == without_tracebacks(recorded["body"])


def test_missing_prompt_key_is_answered_byte_for_byte(standin):
    recorded = recording("err_no_prompt_key.json")
    response = requests.post(standin.url + "/prompt", json=recorded["request"], timeout=TIMEOUT)
    assert (response.status_code, response.text) == (recorded["http_status"], recorded["body_text"])


def test_body_that_is_not_json_gets_plain_500(standin):
    recorded = recording("err_not_json.json")
    response = requests.post(standin.url + "/prompt", data=recorded["request_raw"], timeout=TIMEOUT)
    assert (response.status_code, response.text) == (recorded["http_status"], recorded["body_text"])
    assert response.headers["Content-Type"].startswith("text/plain")


def test_other_validation_errors_have_comfyui_shapes(standin):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1"], "filename_prefix": "x"}},
        "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "nope.safetensors"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
        "6": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    response = requests.post(standin.url + "/prompt", json={"prompt": prompt}, timeout=TIMEOUT)
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errors = {node_id: entry["errors"] for node_id, entry in body["node_errors"].items()}
    assert [e["type"] for e in errors["1"]] == ["value_smaller_than_min"]
    assert errors["1"][0]["message"] == "Value 0 smaller than min of 1"
    assert "5" in body["node_errors"]["1"]["dependent_outputs"]
    assert errors["2"][0]["type"] == "bad_linked_input"
    assert errors["4"][0]["type"] == "return_type_mismatch"
    assert errors["4"][0]["details"] == "images, received_type(MODEL) mismatch input_type(IMAGE)"
    assert errors["6"][0]["details"] == "image - Invalid image file: missing.png"
    assert "3" not in errors  # a checkpoint loader is not an output, and no output uses it


def test_unknown_checkpoint_is_value_not_in_list(standin):
    prompt = recording("txt2img_random_sd15_prompt.json")
    prompt["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    response = requests.post(standin.url + "/prompt", json={"prompt": prompt}, timeout=TIMEOUT)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                             "details": "", "extra_info": {}}
    assert body["node_errors"] == {"4": {
        "errors": [{
            "type": "value_not_in_list", "message": "Value not in list",
            "details": "ckpt_name: 'nope.safetensors' not in ['random_sd15.safetensors']",
            "extra_info": {"input_name": "ckpt_name",
                           "input_config": [["random_sd15.safetensors"],
                                            {"tooltip": "The name of the checkpoint (model) to load."}],
                           "received_value": "nope.safetensors"}}],
        "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}}


def test_client_prompt_id_is_used_when_canonical(standin):
    prompt_id = str(uuid.uuid4())
    run = run_prompt(standin, {"prompt": image_prompt("given_id", 0x0D0E0F), "prompt_id": prompt_id})
    assert run.prompt_id == prompt_id
    for bad in (prompt_id.upper(), "not-a-uuid", prompt_id.replace("-", "")):
        response = requests.post(standin.url + "/prompt", json={"prompt": image_prompt("x", 0), "prompt_id": bad},
                                 timeout=TIMEOUT)
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_prompt_id"
        assert response.json()["node_errors"] == {}


# --- small routes ----------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(recording("view_edge_cases.json")))
def test_view_edge_cases_match_recording(standin, case):
    recorded = recording("view_edge_cases.json")[case]
    response = requests.get(standin.url + "/view", params=recorded["params"], timeout=TIMEOUT)
    assert (response.status_code, response.text) == (recorded["http_status"], recorded["body"])


def test_small_routes_match_recordings(standin):
    def get(path):
        return requests.get(standin.url + path, timeout=TIMEOUT)

    for path in ("/queue", "/api/queue"):
        response = get(path)
        assert (response.status_code, response.json()) == (200, recording("queue_idle.json")["body"])
        assert response.headers["Content-Type"] == JSON_TYPE
    free = requests.post(standin.url + "/free", json={"unload_models": True}, timeout=TIMEOUT)
    assert (free.status_code, free.text) == (200, recording("free.json")["body"])
    unknown = get(f"/history/{uuid.uuid4()}")
    assert (unknown.status_code, unknown.json()) == (200, recording("history_unknown.json")["body"])
    assert get("/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    assert get("/embeddings").json() == []
    assert "checkpoints" in get("/models").json()
    assert get("/models/checkpoints").json() == ["random_sd15.safetensors"]
    assert get("/models/nope").status_code == 404
    assert get("/api/features").json() == {"supports_preview_metadata": True, "max_upload_size": 100 * 1024 * 1024}


def test_history_list_keeps_order_and_limits(standin):
    for color in (1, 2, 3):
        run_prompt(standin, {"prompt": image_prompt("listed", color)})
    everything = requests.get(standin.url + "/history", timeout=TIMEOUT).json()
    recorded = recording("history_list_max2.json")
    newest = requests.get(standin.url + "/history", params={"max_items": 2}, timeout=TIMEOUT)
    assert newest.status_code == recorded["http_status"]
    assert len(recorded["keys"]) == 2 and list(newest.json()) == list(everything)[-2:]
    oldest = requests.get(standin.url + "/history", params={"max_items": 1, "offset": 0}, timeout=TIMEOUT)
    assert list(oldest.json()) == list(everything)[:1]


def test_system_stats_match_recording_with_own_python_and_argv(standin):
    stats = requests.get(standin.url + "/system_stats", timeout=TIMEOUT).json()
    assert_same_shape(recording("system_stats.json"), stats)
    assert stats["system"]["comfyui_version"] == "0.3.64"
    assert stats["system"]["python_version"] == sys.version
    assert stats["system"]["argv"][1:] == standin.proc.args[3:]
    assert stats["devices"][0]["type"] == "cpu"


def test_object_info_matches_recordings(standin):
    upload(standin, "input_probe.png", PROBE_PNG)  # the recorded input folder held it
    selected = recording("object_info_selected.json")
    for name, info in selected.items():
        response = requests.get(f"{standin.url}/object_info/{name}", timeout=TIMEOUT)
        assert response.headers["Content-Type"] == JSON_TYPE
        assert response.json() == {name: info}, name
    for name in ("EmptyImage", "SaveImage"):
        assert requests.get(f"{standin.url}/api/object_info/{name}", timeout=TIMEOUT).json() == \
            recording(f"object_info_{name}.json")
    everything = requests.get(standin.url + "/object_info", timeout=TIMEOUT).json()
    assert set(selected) | {"StandinSleep", "StandinRaise", "StandinExit"} <= set(everything)
    assert everything["StandinSleep"]["category"] == "_standin"
    assert requests.get(standin.url + "/object_info/NoSuchNode", timeout=TIMEOUT).json() == {}


def test_foreign_origin_on_loopback_is_refused(standin):
    host = f"127.0.0.1:{standin.port}"
    foreign = requests.get(standin.url + "/queue", headers={"Origin": "http://evil.example"}, timeout=TIMEOUT)
    same = requests.get(standin.url + "/queue", headers={"Origin": f"http://{host}"}, timeout=TIMEOUT)
    assert (foreign.status_code, same.status_code) == (403, 200)


def test_history_is_capped():
    queue = PromptQueue(on_change=lambda: None)
    for index in range(MAX_HISTORY + 5):
        queue.put(QueueItem(index, f"p{index}", {}, {}, [], {}))
        task_id, _ = queue.get()
        queue.task_done(task_id, {"status": None})
    history = queue.history()
    assert len(history) == MAX_HISTORY and next(iter(history)) == "p5"


# --- processes of their own ------------------------------------------------------------

def test_queue_and_history_management(tmp_path):
    standin = start_standin(tmp_path)
    try:
        client_id = str(uuid.uuid4())
        with websocket(standin, client_id) as ws:
            receive(ws)
            running = submit(standin, {"prompt": sleep_prompt(30, 300), "client_id": client_id})
            receive_until(ws, "progress")
            later = submit(standin, {"prompt": sleep_prompt(0.01, 1)})
            first = requests.post(standin.url + "/prompt", json={"prompt": sleep_prompt(0.02, 1), "front": True},
                                  timeout=TIMEOUT).json()
            assert first["number"] < 0

            queue = requests.get(standin.url + "/queue", timeout=TIMEOUT).json()
            assert [entry[1] for entry in queue["queue_running"]] == [running]
            assert sorted(entry[1] for entry in queue["queue_pending"]) == sorted([later, first["prompt_id"]])
            assert requests.get(standin.url + "/prompt", timeout=TIMEOUT).json()["exec_info"]["queue_remaining"] == 3

            requests.post(standin.url + "/queue", json={"delete": [later]}, timeout=TIMEOUT)
            pending = requests.get(standin.url + "/queue", timeout=TIMEOUT).json()["queue_pending"]
            assert [entry[1] for entry in pending] == [first["prompt_id"]]
            requests.post(standin.url + "/queue", json={"clear": True}, timeout=TIMEOUT)
            assert requests.get(standin.url + "/queue", timeout=TIMEOUT).json()["queue_pending"] == []

            assert requests.post(standin.url + "/interrupt", timeout=TIMEOUT).status_code == 200
            assert "execution_interrupted" in types(receive_until_done(ws, running))

        assert list(requests.get(standin.url + "/history", timeout=TIMEOUT).json()) == [running]
        requests.post(standin.url + "/history", json={"delete": [running]}, timeout=TIMEOUT)
        assert requests.get(standin.url + "/history", timeout=TIMEOUT).json() == {}
        run_prompt(standin, {"prompt": image_prompt("cleared", 5)})
        requests.post(standin.url + "/history", json={"clear": True}, timeout=TIMEOUT)
        assert requests.get(standin.url + "/history", timeout=TIMEOUT).json() == {}
    finally:
        assert standin.stop() == 0


def test_standin_exit_ends_the_process_with_its_code(tmp_path):
    standin = start_standin(tmp_path)
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "StandinExit", "inputs": {"code": 3, "images": ["1", 0]}},
    }
    client_id = str(uuid.uuid4())
    seen = []
    with websocket(standin, client_id) as ws:
        receive(ws)
        submit(standin, {"prompt": prompt, "client_id": client_id})
        with pytest.raises(ConnectionClosed):
            while True:
                seen.append(receive(ws))
    assert standin.proc.wait(timeout=TIMEOUT) == 3
    assert seen[-1]["type"] == "executing" and seen[-1]["data"]["node"] == "2"


def test_flags_of_a_real_launcher_are_accepted(tmp_path):
    extra = tmp_path / "extra" / "ckpts"
    extra.mkdir(parents=True)
    (extra / "elsewhere.safetensors").write_bytes(b"x")
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text("mine:\n  base_path: extra\n  checkpoints: |\n    ckpts\n")
    standin = start_standin(
        tmp_path, "--cpu", "--disable-auto-launch", "--disable-all-custom-nodes", "--disable-metadata",
        "--verbose", "--extra-model-paths-config", str(config), "--max-upload-size", "1",
        "--front-end-root", "/nowhere", "--some-future-flag", "--startup-delay", "0.2")
    try:
        assert requests.get(standin.url + "/models/checkpoints", timeout=TIMEOUT).json() == ["elsewhere.safetensors"]
        assert upload(standin, "big.png", b"\0" * (2 * 1024 * 1024)).status_code == 413
        run_prompt(standin, {"prompt": image_prompt("plain", 9)})
        with Image.open(standin.output_dir / "plain_00001_.png") as saved:
            assert "prompt" not in saved.info
        standin.proc.send_signal(signal.SIGINT)
        assert standin.proc.wait(TIMEOUT) == 0
    finally:
        standin.stop()
    log = standin.log()
    assert "ignores unknown arguments: --front-end-root /nowhere --some-future-flag" in log
    assert f"To see the GUI go to: http://127.0.0.1:{standin.port}" in log


def test_port_in_use_exits_with_error(standin, tmp_path):
    result = subprocess.run(standin_command(tmp_path, standin.port), cwd=REPO_ROOT, env=standin_env(),
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode != 0
    assert "address already in use" in (result.stdout + result.stderr).lower()


def test_fake_comfy_home_runs_the_standin_with_the_launchers_argv(tmp_path):
    home = tmp_path / "ComfyUI"
    main_py = write_fake_comfy_home(home)
    (home / "models" / "checkpoints").mkdir(parents=True)
    (home / "models" / "checkpoints" / "model.safetensors").write_bytes(b"x")
    port = free_port()
    argv = [str(main_py), "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch"]
    log_path = tmp_path / "comfy.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, *argv], cwd=tmp_path,
                                stdout=log_file, stderr=subprocess.STDOUT)
    standin = StandinProcess(proc, port, home, log_path)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "To see the GUI go to" not in standin.log():
            assert proc.poll() is None and time.monotonic() < deadline, standin.log()
            time.sleep(0.05)
        stats = requests.get(standin.url + "/system_stats", timeout=TIMEOUT).json()
        assert stats["system"]["argv"] == argv
        assert requests.get(standin.url + "/models/checkpoints", timeout=TIMEOUT).json() == ["model.safetensors"]
        run_prompt(standin, {"prompt": image_prompt("home", 1)})
        assert (home / "output" / "home_00001_.png").is_file()
    finally:
        assert standin.stop() == 0
