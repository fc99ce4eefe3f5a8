"""`GET /jobs/{id}/events` (server-sent events) on a real Pod with two API workers: every stream,
whichever worker serves it, sees the job's states and progress in order and ends with `done`."""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import subprocess
import sys

import pytest

from services.api.progress_board import ProgressBoard
from services.comfy.client import Progress
from tests import workflows
from tests.pod_process import start_pod

STREAMS = 4  # on two workers, streams land on both: the one running the job and the other


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    pod = start_pod(tmp_path_factory.mktemp("events"), env={"API_WORKERS": "2"})
    yield pod
    pod.stop()


def read_events(port: int, job_id: str, timeout: float = 60) -> list[tuple[str, dict]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", f"/jobs/{job_id}/events", headers={"Accept": "text/event-stream"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
        events, name, data = [], None, []
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and name:
                events.append((name, json.loads("\n".join(data))))
                if name == "done":
                    return events
                name, data = None, []
        return events
    finally:
        conn.close()


def test_every_stream_sees_states_progress_and_done_in_order(pod):
    status, accepted = pod.request("POST", "/run", {"workflow": workflows.sleep_then_save(2, steps=20),
                                                    "async": True, "job_id": "streamed"})
    assert status == 202, accepted
    with concurrent.futures.ThreadPoolExecutor(STREAMS) as pool:
        streams = list(pool.map(lambda _: read_events(pod.api_port, "streamed"), range(STREAMS)))
    for events in streams:
        names = [name for name, _ in events]
        assert names[-1] == "done" and events[-1][1]["state"] == "succeeded", names
        states = [body["state"] for name, body in events if name == "state"]
        assert states[-1] == "succeeded" and "running" in states
        percents = [body["percent"] for name, body in events if name == "progress"]
        assert percents and percents == sorted(percents), percents  # progress only moves forward
        assert any(body.get("node") == "2" for name, body in events if name == "progress")
        assert events[-1][1]["result"]["outputs"]
    # The job ran once, in one worker; every stream saw it from the board and the store.
    assert len({json.dumps(events[-1][1], sort_keys=True) for events in streams}) == 1


def test_a_finished_job_streams_its_state_and_done_at_once(pod):
    assert pod.request("POST", "/run", {"workflow": workflows.image(color=40), "job_id": "finished"})[0] == 200
    events = read_events(pod.api_port, "finished", timeout=10)
    assert [name for name, _ in events] == ["state", "done"]


def test_an_unknown_job_is_a_404_before_any_stream(pod):
    status, error = pod.request("GET", "/jobs/nope/events")
    assert (status, error["error"]) == (404, "not_found")


def test_progress_posted_in_one_process_is_read_in_another(tmp_path):
    """The board is how workers share progress: a real second process posts, this one reads."""
    code = ("import sys; from pathlib import Path; from services.api.progress_board import ProgressBoard;"
            "from services.comfy.client import Progress;"
            "ProgressBoard(Path(sys.argv[1])).post('j1', Progress('p1', 42.5, '7', 3, 8))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    board = ProgressBoard(tmp_path)
    assert board.read("j1") == {"percent": 42.5, "node": "7", "step": 3, "steps": 8}
    board.post("j1", Progress("p1", 100.0, None))
    board.remove("j1")
    assert board.read("j1") is None
