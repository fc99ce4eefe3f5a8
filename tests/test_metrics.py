"""`GET /metrics` against a real Pod with two API workers: the scrape parses as Prometheus text,
its numbers move as jobs, downloads and restarts happen, and every worker answers the same."""
import concurrent.futures
import hashlib
import signal
import statistics
import time
import urllib.error
import urllib.request

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services import startup_ledger
from services.gpu.nvidia_smi import parse_gpus
from services.metrics.catalogue import METRICS, PHASE_BUCKETS
from tests import workflows
from tests.pod_process import FIXTURES, fake_nvidia_smi, start_pod
from tests.timings import TIMINGS

TOKEN = "metrics-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIB = 2**20


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    root, smi = tmp_path_factory.mktemp("metrics"), tmp_path_factory.mktemp("smi")
    # The busy H100 recording: every GPU number is non-zero, so a missing series cannot pass as 0.
    pod = start_pod(root, env={"API_TOKEN": TOKEN, "API_WORKERS": "2",
                               "NVIDIA_SMI": str(fake_nvidia_smi(smi, "busy"))})
    yield pod
    pod.stop()


@pytest.fixture(scope="module")
def model_server():
    from tests.http_server import LocalServer, static
    with LocalServer() as server:
        server.route("/m.safetensors", static(b"M" * 200_000, content_type="application/octet-stream"))
        yield server


def scrape(pod, headers=AUTH) -> tuple[int, str, str]:
    req = urllib.request.Request(pod.url + "/metrics", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def samples(pod) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of one scrape."""
    status, _, text = scrape(pod)
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped, metric, **labels) -> float:
    return scraped.get((metric, tuple(sorted(labels.items()))), 0.0)


def call(pod, method, path, body=None):
    return pod.request(method, path, body, headers=AUTH)


def wait_state(pod, job_id, states=("succeeded", "failed", "cancelled"), timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = call(pod, "GET", f"/jobs/{job_id}")
        assert status == 200, job
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} still {job['state']}")


def wait_until(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.05)


def wait_for(predicate, pod, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        scraped = samples(pod)
        if predicate(scraped):
            return scraped
        assert time.monotonic() < deadline, "the metrics never got there"
        time.sleep(0.2)


def test_scrape_needs_the_token_and_serves_exactly_the_catalogue(pod):
    status, _, body = scrape(pod, headers={})
    assert status == 401 and '"unauthorized"' in body
    assert scrape(pod, headers={"Authorization": "Bearer wrong"})[0] == 401
    status, content_type, text = scrape(pod)
    assert status == 200 and content_type.startswith("text/plain")
    served = {family.name for family in text_string_to_metric_families(text)}
    # The parser names a counter family without its `_total`.
    assert served == {m.name.removesuffix("_total") if m.kind == "counter" else m.name for m in METRICS}
    assert all(name.startswith("appliance_") for name in served)


def test_gpu_metrics_are_gpuwatchs_nvidia_smi_report(pod):
    programs = ("comfyui", "api", "modelsync", "gpuwatch", "logforward")
    # supervisord calls a program RUNNING after its `startsecs`, later than ComfyUI answers.
    scraped = wait_for(lambda s: value(s, "appliance_gpu_state", state="ok") == 1
                       and all(value(s, "appliance_program_up", program=p) == 1 for p in programs), pod)
    gpu = parse_gpus((FIXTURES / "nvidia-smi" / "h100-busy-query.csv").read_text())[0]
    labels = {"gpu": str(gpu.index), "name": gpu.name}
    assert value(scraped, "appliance_gpu_utilization_ratio", **labels) == gpu.utilization_gpu / 100
    assert value(scraped, "appliance_gpu_memory_used_bytes", **labels) == gpu.memory_used_mib * MIB
    assert value(scraped, "appliance_gpu_memory_total_bytes", **labels) == gpu.memory_total_mib * MIB
    assert value(scraped, "appliance_gpu_temperature_celsius", **labels) == gpu.temperature_c
    assert value(scraped, "appliance_gpu_power_watts", **labels) == gpu.power_draw_w
    assert sum(value(scraped, "appliance_gpu_state", state=s) for s in ("ok", "absent", "unknown", "degraded")) == 1
    assert value(scraped, "appliance_comfy_up") == 1 and value(scraped, "appliance_health_ok") == 1
    assert value(scraped, "appliance_gpu_fault") == 0
    assert all(value(scraped, "appliance_program_uptime_seconds", program=p) > 0 for p in programs)


def test_job_counts_and_phase_durations_move_as_jobs_run(pod):
    before = samples(pod)
    for color in (1, 2):
        assert call(pod, "POST", "/run", {"version_id": "demo", "workflow": workflows.image(color=color)})[0] == 200
    status, failed = call(pod, "POST", "/run", {"version_id": "demo", "workflow": workflows.raising()})
    assert status >= 400 and failed["job_id"]
    slow = call(pod, "POST", "/run", {"version_id": "demo", "workflow": workflows.sleep_then_save(1.5, steps=6),
                                      "async": True})[1]["job_id"]
    # The two API workers claim async jobs independently: the doomed job is sent only once the
    # slow one is in ComfyUI's queue, or it could be submitted first and hold the GPU for 600 s.
    wait_until(lambda: call(pod, "GET", f"/jobs/{slow}")[1]["prompt_id"])
    # Long enough that it is still running when the test cancels it, however loaded the machine.
    doomed = call(pod, "POST", "/run", {"version_id": "demo", "workflow": workflows.sleep_then_save(600, steps=6000),
                                        "async": True})[1]["job_id"]
    try:
        running = wait_for(lambda s: value(s, "appliance_jobs", state="running", version="demo") >= 1, pod)
        assert value(running, "appliance_queue_jobs") >= 1
        assert value(running, "appliance_queue_max_jobs") == 1000
        assert wait_state(pod, slow)["state"] == "succeeded"
        wait_state(pod, doomed, states=("running",))
    finally:  # never leave a 600 s job in the way of the module's other tests
        assert call(pod, "DELETE", f"/jobs/{doomed}")[0] in (200, 202)
    assert wait_state(pod, doomed)["state"] == "cancelled"

    after = samples(pod)
    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)
    assert grew("appliance_jobs_finished_total", state="succeeded", version="demo") == 3
    assert grew("appliance_jobs_finished_total", state="failed", version="demo") == 1
    assert grew("appliance_jobs_finished_total", state="cancelled", version="demo") == 1
    assert value(after, "appliance_queue_jobs") == 0
    assert value(after, "appliance_jobs", state="running", version="demo") == 0
    # Every job that started waited in the queue (the synchronous ones 0 s); the runner's phases
    # are timed for the succeeded ones, and `execute` holds the 1.5 s sleep.
    assert grew("appliance_job_phase_seconds_count", phase="queue", version="demo") == 5
    for phase in ("models", "comfy_ready", "execute", "deliver"):
        assert grew("appliance_job_phase_seconds_count", phase=phase, version="demo") == 3, phase
    assert grew("appliance_job_phase_seconds_sum", phase="execute", version="demo") >= 1.5
    for phase in ("queue", "execute"):
        counts = [value(after, "appliance_job_phase_seconds_bucket", le=f"{b:g}", phase=phase, version="demo")
                  for b in PHASE_BUCKETS]
        total = value(after, "appliance_job_phase_seconds_bucket", le="+Inf", phase=phase, version="demo")
        assert counts == sorted(counts) and counts[-1] <= total
        assert total == value(after, "appliance_job_phase_seconds_count", phase=phase, version="demo")


def test_downloads_and_model_bytes(pod, model_server):
    before = samples(pod)
    status, queued = call(pod, "POST", "/download", {"url": model_server.url + "/m.safetensors", "type": "loras",
                                                     "sha256": hashlib.sha256(b"M" * 200_000).hexdigest()})
    assert status == 202, queued
    after = wait_for(lambda s: value(s, "appliance_downloads", state="done")
                     > value(before, "appliance_downloads", state="done"), pod, timeout=60)
    assert value(after, "appliance_download_done_bytes", state="done") - \
        value(before, "appliance_download_done_bytes", state="done") == 200_000
    assert value(after, "appliance_models", type="loras") - value(before, "appliance_models", type="loras") == 1
    assert value(after, "appliance_model_bytes", type="loras") - \
        value(before, "appliance_model_bytes", type="loras") == 200_000


def test_comfy_restarts_and_startup_stages(pod):
    before = value(samples(pod), "appliance_comfy_starts_total")
    assert before >= 1
    assert pod.ctl("restart", "comfyui").returncode == 0
    after = wait_for(lambda s: value(s, "appliance_comfy_up") == 1
                     and value(s, "appliance_comfy_starts_total") == before + 1, pod, timeout=60)
    ledgers = startup_ledger.read_all(pod.root / "data" / "run")
    assert "comfyui" in ledgers
    served = {(dict(labels)["program"], dict(labels)["stage"]): v for (name, labels), v in after.items()
              if name == "appliance_startup_stage_seconds"}
    assert served == {(program, s["stage"]): s["seconds"] for program, stages in ledgers.items() for s in stages}


def test_every_api_worker_answers_the_same(pod):
    workers = psutil.Process(pod.pid("api")).children()
    assert len(workers) == 2

    def one_from_each() -> list[dict]:
        answers = []
        for answering in workers:
            others = [w for w in workers if w.pid != answering.pid]
            for other in others:  # a stopped worker accepts no connection: the other one must answer
                other.send_signal(signal.SIGSTOP)
            try:
                answers.append(samples(pod))
            finally:
                for other in others:
                    other.send_signal(signal.SIGCONT)
        # Uptimes tick between the two scrapes; everything else is shared state.
        return [{k: v for k, v in a.items() if k[0] != "appliance_program_uptime_seconds"} for a in answers]

    # Program and ComfyUI states come from each worker's one-second health snapshot: right after an
    # earlier test restarted ComfyUI the two may see it a second apart, so allow it to settle.
    for _ in range(10):
        answers = one_from_each()
        if answers[0] == answers[1]:
            break
        time.sleep(1)
    assert answers[0] == answers[1]
    assert value(answers[0], "appliance_jobs_finished_total", state="succeeded", version="demo") >= 3


def test_metrics_public_opens_metrics_and_nothing_else(tmp_path):
    pod = start_pod(tmp_path, env={"API_TOKEN": TOKEN, "METRICS_PUBLIC": "1"})
    try:
        status, _, text = scrape(pod, headers={})
        assert status == 200 and "appliance_queue_jobs" in text
        assert pod.request("GET", "/jobs")[0] == 401
    finally:
        pod.stop()


def test_scrape_cost_with_a_hundred_jobs(pod):
    have = sum(v for (name, _), v in samples(pod).items() if name == "appliance_jobs_finished_total")
    def submit(i):
        return call(pod, "POST", "/run", {"version_id": "demo", "async": True,
                                          "workflow": workflows.image(color=2000 + i, width=16, height=16)})
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(submit, range(max(0, 100 - int(have)))))
    for _, body in answers:
        wait_state(pod, body["job_id"], timeout=120)
    for _ in range(5):  # warm: connections, page cache
        samples(pod)
    times = []
    for _ in range(50):
        started = time.perf_counter()
        status, _, _ = scrape(pod)
        times.append((time.perf_counter() - started) * 1000)
        assert status == 200
    jobs = sum(v for (name, _), v in samples(pod).items() if name == "appliance_jobs_finished_total")
    assert jobs >= 100
    # Measured for the run's summary, not asserted (see bench/ for speed).
    TIMINGS["metrics scrape (ms)"].update({f"median of 50, {jobs:.0f} jobs": round(statistics.median(times), 1),
                                           "p90": round(sorted(times)[44], 1)})
