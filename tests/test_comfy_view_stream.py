"""`ComfyClient.view_to_file`: outputs streamed from ComfyUI's `/view` to disk in bounded memory,
against a real process (the stand-in, or real ComfyUI with COMFYUI_DIR)."""
import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from services.comfy.client import ComfyClient
from services.errors import AppError
from tests.http_server import LocalServer
from tests.standin_process import REPO_ROOT
from tests.timings import TIMINGS

pytestmark = pytest.mark.comfy

MiB = 1 << 20
SUBFOLDER = "jobs/stream"


def place_output(comfy, name: str, size: int):
    """A file of `size` bytes in ComfyUI's output folder: sparse, with random blocks at the start,
    middle and end so the hash checks that every part arrives in order."""
    folder = comfy.output_dir / SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, size // 2, max(size - 4096, 0)):
            f.seek(offset)
            f.write(os.urandom(min(4096, size - offset)))
    return path


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


async def stream(url: str, path, name: str, **kwargs):
    client = ComfyClient(url)
    try:
        return await client.view_to_file(path, filename=name, subfolder=SUBFOLDER, **kwargs)
    finally:
        await client.close()


# Run in a child so that its peak RSS is the streaming's alone. VmHWM is the peak of this
# process image (ru_maxrss would also count the pytest process it was forked from).
_PROBE = """
import asyncio, json, sys
from pathlib import Path
from services.comfy.client import ComfyClient

def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

async def main(url, dest, name, subfolder):
    client = ComfyClient(url)
    try:
        await client.ping()  # sessions and imports are in place before the baseline
        before = peak_kib()
        size, sha = await client.view_to_file(Path(dest), filename=name, subfolder=subfolder)
    finally:
        await client.close()
    print(json.dumps({"size": size, "sha256": sha, "baseline_kib": before, "peak_kib": peak_kib()}))

asyncio.run(main(*sys.argv[1:]))
"""


def test_a_1gb_output_streams_in_bounded_memory(comfy, tmp_path):
    size = 1 << 30
    expected = sha256_of(place_output(comfy, "big_video.mp4", size))
    dest = tmp_path / "spool" / "big_video.mp4"
    dest.parent.mkdir()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _PROBE, comfy.url, str(dest), "big_video.mp4", SUBFOLDER],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    peak_mb, baseline_mb = report["peak_kib"] / 1024, report["baseline_kib"] / 1024
    TIMINGS["view_to_file"].update({"1gb_seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb, 1),
                                    "baseline_rss_mb": round(baseline_mb, 1)})
    assert report["size"] == size and report["sha256"] == expected
    assert dest.stat().st_size == size and sha256_of(dest) == expected
    assert peak_mb < 150, f"peak RSS {peak_mb:.0f} MB for a 1 GiB output"
    assert peak_mb - baseline_mb < 50


def test_a_small_output_matches_view_and_is_private(comfy, tmp_path):
    expected = sha256_of(place_output(comfy, "small.png", 3 * MiB + 17))

    async def go():
        client = ComfyClient(comfy.url)
        try:
            got = await client.view_to_file(tmp_path / "small.png", filename="small.png", subfolder=SUBFOLDER)
            return got, await client.view("small.png", SUBFOLDER)
        finally:
            await client.close()
    (size, sha), whole = asyncio.run(go())
    assert (size, sha) == (len(whole), hashlib.sha256(whole).hexdigest()) == (3 * MiB + 17, expected)
    assert (tmp_path / "small.png").read_bytes() == whole
    assert (tmp_path / "small.png").stat().st_mode & 0o777 == 0o600


def test_an_existing_file_is_never_replaced(comfy, tmp_path):
    place_output(comfy, "exists.bin", 1000)
    dest = tmp_path / "exists.bin"
    dest.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        asyncio.run(stream(comfy.url, dest, "exists.bin"))
    assert dest.read_bytes() == b"someone else's"


@pytest.mark.parametrize("cap,fits", [(8 * MiB, True), (8 * MiB - 1, False), (MiB, False)])
def test_max_bytes_caps_the_output(comfy, tmp_path, cap, fits):
    place_output(comfy, "capped.bin", 8 * MiB)
    dest = tmp_path / "capped.bin"
    if fits:
        assert asyncio.run(stream(comfy.url, dest, "capped.bin", max_bytes=cap))[0] == 8 * MiB
        return
    with pytest.raises(AppError) as err:
        asyncio.run(stream(comfy.url, dest, "capped.bin", max_bytes=cap))
    assert err.value.code == "output_too_large:capped.bin" and err.value.extra["max_bytes"] == cap
    assert not dest.exists()


def test_max_bytes_stops_an_answer_without_content_length_at_once(tmp_path):
    """Without Content-Length the count itself stops the read: the server sees the client hang up
    long before its endless body ends."""
    sent = []

    def endless(req):
        req.send_response(200)
        req.send_header("Content-Type", "application/octet-stream")
        req.send_header("Transfer-Encoding", "chunked")
        req.end_headers()
        block = b"x" * 65536
        try:
            for _ in range(100_000):  # 6.5 GB if nobody hangs up
                req.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                sent.append(len(block))
        except ConnectionError:
            pass

    dest = tmp_path / "endless.bin"
    with LocalServer() as server:
        server.route("/view", endless)
        with pytest.raises(AppError) as err:
            asyncio.run(stream(server.url, dest, "endless.bin", max_bytes=2 * MiB))
        settled = steady_count(sent)
    assert err.value.code == "output_too_large:endless.bin"
    assert settled and sum(sent) < 64 * MiB  # what the socket buffers took before the hang-up
    assert not dest.exists()


def steady_count(items: list, quiet: float = 0.3, limit: float = 5.0) -> bool:
    """True once `items` stops growing for `quiet` seconds (within `limit`)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = len(items)
        time.sleep(quiet)
        if len(items) == before:
            return True
    return False


def test_a_missing_output_is_output_fetch_failed(comfy, tmp_path):
    dest = tmp_path / "nope.png"
    with pytest.raises(AppError) as err:
        asyncio.run(stream(comfy.url, dest, "nope.png"))
    assert err.value.code == "output_fetch_failed:nope.png" and "404" in err.value.detail
    assert not dest.exists()


def test_no_comfy_is_comfy_unreachable(tmp_path):
    dest = tmp_path / "x.png"
    with pytest.raises(AppError) as err:
        asyncio.run(stream("http://127.0.0.1:9", dest, "x.png"))
    assert err.value.code == "comfy_unreachable"
    assert not dest.exists()


async def once_growing(path, task: asyncio.Task) -> None:
    """Returns once `task` has written part of `path` (it is mid-stream)."""
    while not (path.exists() and path.stat().st_size >= 4 * MiB):
        assert not task.done(), "the stream ended before it could be interrupted"
        await asyncio.sleep(0.005)


def test_comfy_killed_mid_stream_removes_the_partial_file(fresh_comfy, tmp_path):
    place_output(fresh_comfy, "dying.mp4", 1 << 30)
    dest = tmp_path / "dying.mp4"

    async def go():
        task = asyncio.create_task(stream(fresh_comfy.url, dest, "dying.mp4"))
        await once_growing(dest, task)
        fresh_comfy.proc.send_signal(signal.SIGKILL)
        with pytest.raises(AppError) as err:
            await asyncio.wait_for(task, 10)
        return err.value
    error = asyncio.run(go())
    assert error.code == "comfy_unreachable"
    assert not dest.exists()


def test_cancelling_removes_the_partial_file_and_comfy_keeps_serving(comfy, tmp_path):
    place_output(comfy, "cancelled.mp4", 1 << 30)
    dest = tmp_path / "cancelled.mp4"

    async def go():
        client = ComfyClient(comfy.url)
        try:
            task = asyncio.create_task(client.view_to_file(dest, filename="cancelled.mp4", subfolder=SUBFOLDER))
            await once_growing(dest, task)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await client.ping()
        finally:
            await client.close()
    assert asyncio.run(go()) is True
    assert not dest.exists()
