"""The log forwarder reads every ComfyUI backend's start-up stages from its output into that
backend's own ledger (a Pod with one ComfyUI per GPU), fed supervisord's payloads directly: no
Pod is started (tests/test_startup_ledger.py runs the forwarder in a real one-backend Pod)."""
import io
import json
import os

from services import startup_ledger
from services.comfy import backends
from services.config import Settings
from services.pod.logforward import ComfyWatches, forward

GUI = "To see the GUI go to: http://127.0.0.1:8189"


def payload(program: str, pid: int, *lines: str) -> str:
    return f"processname:{program} groupname:{program} pid:{pid} channel:stdout\n" + "\n".join(lines) + "\n"


def stages(run_dir) -> list[str]:
    """The ledger's stages from `exec` on (before it: the process's own start)."""
    names = [s["stage"] for s in startup_ledger.read_all(run_dir).get("comfyui", [])]
    return names[names.index("exec"):] if "exec" in names else names


def test_each_comfyui_program_marks_its_own_backends_ledger(tmp_path):
    settings = Settings.from_env({"DATA_ROOT": str(tmp_path), "COMFY_GPUS": "3"})
    planned = backends.plan(settings)
    plans = []

    def plan():
        plans.append(1)
        return backends.by_program(planned)
    watches = ComfyWatches(settings.run_dir, plan)
    pid = os.getpid()  # each backend's ComfyUI "is" this process: its ledger, as services.comfyexec writes it
    for b in planned[:2]:
        startup_ledger.Ledger("comfyui", b.run_dir).mark("exec")
    out = io.StringIO()

    forward(payload("comfyui", pid, GUI), out=out, on_line=watches.feed)
    assert not plans  # backend 0 alone never needs the settings
    forward(payload("api", pid, GUI), out=out, on_line=watches.feed)
    forward(payload("comfyui-1", pid, "Import times for custom nodes:", "   0.1 seconds: /c/n.py", ""),
            out=out, on_line=watches.feed)
    forward(payload("comfyui-1", pid, GUI, "Prompt executed in 2.90 seconds"), out=out, on_line=watches.feed)
    forward(payload("comfyui-7", pid, GUI), out=out, on_line=watches.feed)  # no such backend: ignored

    assert stages(planned[0].run_dir) == ["exec", "comfy_listening"]
    assert stages(planned[1].run_dir) == ["exec", "custom_nodes_imported", "comfy_listening", "first_prompt_executed"]
    assert startup_ledger.read_full(planned[1].run_dir)["comfyui"]["custom_nodes"][0]["path"] == "/c/n.py"
    assert not (planned[2].run_dir / "startup-comfyui.json").exists()  # comfyui-2 printed nothing
    assert len(plans) == 1
    # Forwarding itself is unchanged: every non-blank line, wrapped with its program's name.
    loggers = [json.loads(line)["logger"] for line in out.getvalue().splitlines()]
    assert loggers == ["comfyui", "api", "comfyui-1", "comfyui-1", "comfyui-1", "comfyui-1", "comfyui-7"]
