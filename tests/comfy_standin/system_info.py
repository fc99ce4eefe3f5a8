"""`/system_stats` and `/features` answers, shaped like ComfyUI 0.3.64's.

Version fields are those of the recorded ComfyUI (tests/fixtures/comfy/system_stats.json);
python_version, argv and the memory figures are this process's own. The only device is
the CPU, as for a ComfyUI started with `--cpu`.
"""

from __future__ import annotations

import os
import sys

COMFYUI_VERSION = "0.3.64"
FRONTEND_VERSION = "1.27.10"
TEMPLATES_VERSION = "0.1.95"
PYTORCH_VERSION = "2.14.1+cu130"


def memory() -> tuple[int, int]:
    """(total, available) bytes of RAM."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return (int(fields["MemTotal"].split()[0]) * 1024, int(fields["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return total, total


def system_stats() -> dict:
    total, free = memory()
    return {
        "system": {
            "os": os.name,
            "ram_total": total,
            "ram_free": free,
            "comfyui_version": COMFYUI_VERSION,
            "required_frontend_version": FRONTEND_VERSION,
            "installed_templates_version": TEMPLATES_VERSION,
            "required_templates_version": TEMPLATES_VERSION,
            "python_version": sys.version,
            "pytorch_version": PYTORCH_VERSION,
            "embedded_python": os.path.basename(os.path.dirname(sys.executable)) == "python_embeded",
            "argv": sys.argv,
        },
        "devices": [{
            "name": "cpu", "type": "cpu", "index": None,
            "vram_total": total, "vram_free": free,
            "torch_vram_total": total, "torch_vram_free": free,
        }],
    }


def features(max_upload_bytes: int) -> dict:
    """What the server tells clients in `/features` and the websocket `feature_flags` reply."""
    return {"supports_preview_metadata": True, "max_upload_size": max_upload_bytes}
