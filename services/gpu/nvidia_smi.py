"""Reading `nvidia-smi`: the query command line, its CSV parsed into typed GPU records, and a
verdict on each GPU's health.

The field list reproduces tests/fixtures/nvidia-smi byte for byte (canonical field names).
CSV rather than NVML: nvidia-smi exists wherever the driver does, and its output can be
recorded and replayed in CI. Values arrive as `[N/A]` (fan on SXM boards, retired pages on
H100), hex bitmasks, or with units when the header variant is used; all are normalised here.
"""
from __future__ import annotations

import contextlib
import csv
import io
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

QUERY_FIELDS = (
    "index", "uuid", "name", "driver_version", "pci.bus_id", "utilization.gpu", "utilization.memory",
    "memory.total", "memory.used", "memory.free", "temperature.gpu", "power.draw", "power.limit",
    "clocks.current.sm", "clocks.current.memory", "pstate", "ecc.errors.uncorrected.volatile.total",
    "ecc.errors.corrected.volatile.total", "fan.speed", "clocks_event_reasons.active", "retired_pages.pending",
)
QUERY_GPU = ["nvidia-smi", "--query-gpu=" + ",".join(QUERY_FIELDS), "--format=csv,noheader,nounits"]
QUERY_APPS = ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader,nounits"]

# clocks_event_reasons bits that mean the GPU is being held back by heat or power faults.
_HW_SLOWDOWN = 0x8 | 0x40 | 0x80  # hw_slowdown | hw_thermal_slowdown | hw_power_brake_slowdown
HOT_CELSIUS = 87


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    driver_version: str
    pci_bus_id: str
    utilization_gpu: float | None
    utilization_memory: float | None
    memory_total_mib: float | None
    memory_used_mib: float | None
    memory_free_mib: float | None
    temperature_c: float | None
    power_draw_w: float | None
    power_limit_w: float | None
    clock_sm_mhz: float | None
    clock_memory_mhz: float | None
    pstate: str
    ecc_uncorrected: float | None
    ecc_corrected: float | None
    fan_percent: float | None
    clocks_event_reasons: int | None
    retired_pages_pending: str | None

    def problems(self) -> list[str]:
        found = []
        if self.ecc_uncorrected:
            found.append(f"{int(self.ecc_uncorrected)} uncorrected ECC errors")
        if self.retired_pages_pending and self.retired_pages_pending.lower() == "yes":
            found.append("retired pages pending (reset the GPU)")
        if self.temperature_c is not None and self.temperature_c >= HOT_CELSIUS:
            found.append(f"temperature {self.temperature_c:g} C")
        if self.clocks_event_reasons and self.clocks_event_reasons & _HW_SLOWDOWN:
            found.append(f"hardware slowdown (clocks_event_reasons {self.clocks_event_reasons:#x})")
        return found

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = self.problems()
        return data


@dataclass(frozen=True)
class ComputeApp:
    pid: int
    process_name: str
    used_memory_mib: float | None


def _number(raw: str) -> float | None:
    value = raw.strip()
    if not value or value.startswith("[") or value in ("N/A", "Not Supported"):
        return None
    value = value.split(" ", 1)[0]  # "81559 MiB", "0 %", "123.45 W" in the header variant
    try:
        return float(value)
    except ValueError:
        return None


def _text(raw: str) -> str | None:
    value = raw.strip()
    return None if value.startswith("[") or value == "N/A" else value


def _rows(text: str) -> list[list[str]]:
    rows = [row for row in csv.reader(io.StringIO(text), skipinitialspace=True) if row and any(row)]
    if rows and rows[0] and rows[0][0].strip() == "index":
        rows = rows[1:]  # --format=csv with a header line
    return rows


def parse_gpus(text: str) -> list[Gpu]:
    gpus = []
    for row in _rows(text):
        if len(row) != len(QUERY_FIELDS):
            raise ValueError(f"expected {len(QUERY_FIELDS)} fields, got {len(row)}")
        f = dict(zip(QUERY_FIELDS, row))
        reasons = _text(f["clocks_event_reasons.active"])
        gpus.append(Gpu(
            index=int(f["index"]), uuid=f["uuid"].strip(), name=f["name"].strip(),
            driver_version=f["driver_version"].strip(), pci_bus_id=f["pci.bus_id"].strip(),
            utilization_gpu=_number(f["utilization.gpu"]), utilization_memory=_number(f["utilization.memory"]),
            memory_total_mib=_number(f["memory.total"]), memory_used_mib=_number(f["memory.used"]),
            memory_free_mib=_number(f["memory.free"]), temperature_c=_number(f["temperature.gpu"]),
            power_draw_w=_number(f["power.draw"]), power_limit_w=_number(f["power.limit"]),
            clock_sm_mhz=_number(f["clocks.current.sm"]), clock_memory_mhz=_number(f["clocks.current.memory"]),
            pstate=f["pstate"].strip(), ecc_uncorrected=_number(f["ecc.errors.uncorrected.volatile.total"]),
            ecc_corrected=_number(f["ecc.errors.corrected.volatile.total"]), fan_percent=_number(f["fan.speed"]),
            clocks_event_reasons=int(reasons, 16) if reasons else None,
            retired_pages_pending=_text(f["retired_pages.pending"]),
        ))
    return gpus


def parse_apps(text: str) -> list[ComputeApp]:
    return [ComputeApp(int(r[0]), r[1].strip(), _number(r[2])) for r in _rows(text) if len(r) == 3]


class ProbeFailed(Exception):
    def __init__(self, state: str, reason: str, hung: bool = False):
        super().__init__(reason)
        self.state = state  # "absent" (no driver/tool), "degraded" (a lost GPU) or "unknown" (it hung or failed)
        self.reason = reason
        self.hung = hung  # it did not answer in time (see state.escalate_hang)


# nvidia-smi's documented exit status for "a GPU has fallen off the bus or has otherwise become
# inaccessible" (Xid 79 and kin): not a question of the tool, the GPU is gone.
_GPU_LOST_STATUS = 15
_REAP_SECONDS = 1.0


def run(command: list[str], timeout: float) -> str:
    """Run nvidia-smi with a hard deadline: a wedged driver must never block health checks."""
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise ProbeFailed("absent", "nvidia-smi not found (no NVIDIA driver)") from None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Killed, then waited for a moment only (subprocess.run waits for good): an nvidia-smi
        # stuck inside a wedged driver sleeps uninterruptibly and outlives even SIGKILL, and
        # waiting for it would freeze gpuwatch itself. subprocess reaps it later if it ever exits.
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(_REAP_SECONDS)
        proc.stdout.close()
        proc.stderr.close()
        raise ProbeFailed("unknown", f"nvidia-smi did not answer within {timeout:g} s", hung=True) from None
    if proc.returncode != 0:
        message = (stderr or stdout).strip().splitlines()
        reason = f"nvidia-smi failed ({proc.returncode}): {message[0] if message else ''}"
        raise ProbeFailed("degraded" if proc.returncode == _GPU_LOST_STATUS else "unknown", reason)
    return stdout
