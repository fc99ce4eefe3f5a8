"""The ComfyUI client against a real process (the stand-in, or real ComfyUI with COMFYUI_DIR)."""
import asyncio
import io
import signal
import time

import pytest
from PIL import Image

from services.comfy.client import ComfyClient
from services.errors import AppError
from tests import workflows
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.comfy


def run(coro):
    return asyncio.run(coro)


async def execute(url, workflow, stall_timeout=None, **kwargs):
    client = ComfyClient(url, **kwargs)
    try:
        prompt_id = await client.submit(workflow)
        return await client.wait(prompt_id, prompt=workflow, stall_timeout=stall_timeout)
    finally:
        await client.close()


def test_fresh_run_collects_the_saved_image(comfy):
    outcome = run(execute(comfy.url, workflows.image(prefix="fresh_client")))
    assert [f.kind for f in outcome.files] == ["image"]
    saved = outcome.files[0]
    assert saved.type == "output" and saved.filename.startswith("fresh_client_")

    async def fetch():
        client = ComfyClient(comfy.url)
        try:
            return await client.view(**saved.view_params)
        finally:
            await client.close()
    assert Image.open(io.BytesIO(run(fetch()))).size == (64, 64)


def test_cached_rerun_points_at_the_earlier_file(comfy):
    wf = workflows.image(prefix="cached_client", color=0x010203)
    first = run(execute(comfy.url, wf))
    files_before = sorted(p.name for p in comfy.output_dir.glob("cached_client_*"))
    second = run(execute(comfy.url, wf))
    assert sorted(p.name for p in comfy.output_dir.glob("cached_client_*")) == files_before
    assert set(second.cached_nodes) == {"1", "2"}
    assert [f.filename for f in second.files] == [f.filename for f in first.files]


def test_previews_are_not_results_and_animations_are_marked(comfy):
    outcome = run(execute(comfy.url, workflows.animated_and_preview()))
    assert [(f.node_id, f.kind) for f in outcome.files] == [("3", "animated")]
    assert all(f.type != "temp" for f in outcome.files)


def test_progress_events_reach_the_waiter(comfy):
    updates = []

    async def go():
        client = ComfyClient(comfy.url)
        wf = workflows.sleep_then_save(0.4, steps=4)
        try:
            prompt_id = await client.submit(wf)
            return await client.wait(prompt_id, prompt=wf, on_progress=updates.append)
        finally:
            await client.close()
    run(go())
    steps = [(u.step, u.steps) for u in updates if u.steps]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert updates[-1].percent > updates[0].percent


@pytest.mark.parametrize("wf,code,node_error", [
    ({"1": {"class_type": "NoSuchNode", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}},
     "workflow_rejected:invalid_prompt", None),
    ({"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}},
     "workflow_rejected:prompt_outputs_failed_validation", "required_input_missing"),
    ({"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}},
     "workflow_rejected:prompt_no_outputs", None),
])
def test_validation_failures_keep_comfys_node_errors(comfy, wf, code, node_error):
    with pytest.raises(AppError) as err:
        run(execute(comfy.url, wf))
    assert err.value.code == code and err.value.status == 400
    if node_error:
        errors = err.value.extra["node_errors"]["1"]["errors"]
        assert errors[0]["type"] == node_error and errors[0]["extra_info"]["input_name"] == "images"


def test_execution_error_names_the_node(comfy):
    with pytest.raises(AppError) as err:
        run(execute(comfy.url, workflows.raising("kaboom 42")))
    assert err.value.code == "execution_error:StandinRaise"
    assert "kaboom 42" in err.value.detail and err.value.extra["node_id"] == "1"


def test_cancel_interrupts_the_running_prompt(comfy):
    async def go():
        client = ComfyClient(comfy.url)
        wf = workflows.sleep_then_save(20, steps=200)
        try:
            prompt_id = await client.submit(wf)
            waiter = asyncio.create_task(client.wait(prompt_id, prompt=wf))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            await client.cancel(prompt_id)
            with pytest.raises(AppError) as err:
                await waiter
            return err.value, time.monotonic() - started
        finally:
            await client.close()
    error, seconds = run(go())
    assert error.code == "interrupted" and seconds < 5


def test_a_prompt_without_a_sign_of_life_is_stalled_and_one_waiting_behind_it_is_not(fresh_comfy):
    """The stall watchdog: a node that blocks without progress ends the wait with comfy_stalled
    after the stall timeout, while a prompt queued behind it (pending, so alive) keeps waiting."""
    async def go():
        client = ComfyClient(fresh_comfy.url, idle_check_interval=5)
        hung, behind = workflows.hanging(30), workflows.image(prefix="behind_hang")
        try:
            hung_id = await client.submit(hung)
            behind_id = await client.submit(behind)
            waiter_behind = asyncio.create_task(client.wait(behind_id, prompt=behind, stall_timeout=2))
            started = time.monotonic()
            with pytest.raises(AppError) as err:
                await client.wait(hung_id, prompt=hung, stall_timeout=2)
            seconds = time.monotonic() - started
            await asyncio.sleep(1.5)
            behind_still_waiting = not waiter_behind.done()
            waiter_behind.cancel()
            await asyncio.gather(waiter_behind, return_exceptions=True)
            return err.value, seconds, behind_still_waiting
        finally:
            await client.close()
    error, seconds, behind_still_waiting = run(go())
    assert error.code == "comfy_stalled" and error.extra["prompt_id"]
    assert 2 <= seconds < 5
    assert behind_still_waiting


def test_progress_keeps_a_long_prompt_alive(comfy):
    """A prompt that reports progress is never stalled, however long it runs past the timeout."""
    outcome = run(execute(comfy.url, workflows.sleep_then_save(3.0, steps=30), stall_timeout=1))
    assert [f.kind for f in outcome.files] == ["image"]


def test_unreachable_comfy():
    with pytest.raises(AppError) as err:
        run(execute("http://127.0.0.1:9", workflows.image()))
    assert err.value.code == "comfy_unreachable"


def test_dropped_websocket_falls_back_to_polling(comfy):
    proxy = TcpProxy(comfy.port)

    async def go():
        client = ComfyClient(proxy.url, idle_check_interval=5, down_check_interval=0.2)
        wf = workflows.sleep_then_save(1.0, steps=5)
        try:
            prompt_id = await client.submit(wf)
            waiter = asyncio.create_task(client.wait(prompt_id, prompt=wf))
            await asyncio.sleep(0.3)
            proxy.block_websockets = True  # it cannot come back...
            proxy.sever()  # ...after the socket dies mid-run; ComfyUI keeps working
            return await asyncio.wait_for(waiter, 15)
        finally:
            await client.close()
    try:
        outcome = run(go())
    finally:
        proxy.close()
    assert [f.kind for f in outcome.files] == ["image"]


def test_crash_mid_job_fails_fast_with_comfy_crashed(fresh_comfy):
    async def go():
        client = ComfyClient(fresh_comfy.url)
        wf = workflows.sleep_then_save(30, steps=300)
        try:
            prompt_id = await client.submit(wf)
            waiter = asyncio.create_task(client.wait(prompt_id, prompt=wf))
            await asyncio.sleep(0.5)
            fresh_comfy.proc.send_signal(signal.SIGKILL)
            started = time.monotonic()
            with pytest.raises(AppError) as err:
                await asyncio.wait_for(waiter, 10)
            return err.value, time.monotonic() - started
        finally:
            await client.close()
    error, seconds = run(go())
    assert error.code == "comfy_crashed" and seconds < 3


def test_node_that_exits_the_process_is_a_crash(fresh_comfy):
    with pytest.raises(AppError) as err:
        run(execute(fresh_comfy.url, workflows.exiting(code=3)))
    assert err.value.code == "comfy_crashed"
    assert fresh_comfy.proc.wait(5) == 3


def test_restarted_comfy_that_lost_the_prompt_is_a_crash(tmp_path):
    from tests.standin_process import start_standin
    first = start_standin(tmp_path / "a")

    async def go():
        client = ComfyClient(first.url, down_check_interval=0.2)
        wf = workflows.sleep_then_save(30, steps=300)
        try:
            prompt_id = await client.submit(wf)
            waiter = asyncio.create_task(client.wait(prompt_id, prompt=wf))
            await asyncio.sleep(0.3)
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait()
            second = start_standin(tmp_path / "b", port=first.port)  # back before we look
            try:
                with pytest.raises(AppError) as err:
                    await asyncio.wait_for(waiter, 10)
                return err.value
            finally:
                second.stop()
        finally:
            await client.close()
    assert run(go()).code == "comfy_crashed"


def test_small_routes(comfy):
    async def go():
        client = ComfyClient(comfy.url)
        try:
            stats = await client.system_stats()
            info = await client.object_info("SaveImage")
            everything = await client.object_info()
            await client.free(unload_models=True, free_memory=True)
            queue = await client.queue()
            return stats, info, everything, queue, await client.ping()
        finally:
            await client.close()
    stats, info, everything, queue, alive = run(go())
    assert stats["system"]["comfyui_version"] and stats["devices"]
    assert info["SaveImage"]["input"]["required"]["filename_prefix"][0] == "STRING"
    assert {"EmptyImage", "SaveImage", "StandinSleep"} <= set(everything)
    assert set(queue) == {"queue_running", "queue_pending"} and alive is True
