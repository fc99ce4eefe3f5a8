"""The appliance's settings: every environment variable, typed, read in one place.

Each `Setting` names its variable (plus the aliases the user's documents use), how to
parse it, and two defaults: `local` for a laptop/CI run from a checkout (everything under
`.data/` in the checkout, loopback, base64 output) and `image` for the container
(`APPLIANCE_PROFILE=image`, set by docker/Dockerfile; the seeds' `/workspace` defaults).
A default may be a callable of the settings parsed so far, so derived paths follow the
variables they derive from. `python -m services settings --markdown` prints README's table
from this registry, so the documentation cannot drift from the code.

A wrong value raises `SettingsError` with one line naming the variable; entrypoints turn
that into a one-line message and exit status 2 (see `load_or_exit`).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from services.errors import AppError
from services.outputs import gcs_names
from services.outputs import s3_names
from services.outputs import registry as output_registry
from services.net.policy import parse_allow_hosts
from services.net.target import parse_target
from services.webhooks.signing import parse_secret

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("local", "image")


class SettingsError(ValueError):
    """A variable holds a value the appliance cannot use."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool(raw: str) -> bool:
    # Strict on purpose (supervisor's datatypes.boolean): "maybe" must not silently mean False.
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def parse_auto_bool(raw: str) -> str | bool:
    """`auto`, or a strict boolean (a setting that can also be left to the appliance to decide)."""
    if raw.strip().lower() == "auto":
        return "auto"
    try:
        return parse_bool(raw)
    except ValueError:
        raise ValueError("expected auto, 1/0, true/false, yes/no or on/off") from None


def parse_int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("expected an integer") from None


def at_least(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = parse_int(raw)
        if value < minimum:
            raise ValueError(f"expected an integer >= {minimum}")
        return value

    return parse


def parse_port(raw: str) -> int:
    port = parse_int(raw)
    if not 1 <= port <= 65535:
        raise ValueError("expected a TCP port between 1 and 65535")
    return port


def parse_seconds(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if value < 0:
        raise ValueError("expected a number of seconds >= 0")
    return value


def parse_path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError("expected a path")
    return Path(raw.strip()).expanduser()


def parse_str(raw: str) -> str:
    return raw.strip()


def parse_list(raw: str) -> tuple[str, ...]:
    return tuple(part for part in raw.split() if part)


def parse_hosts(raw: str) -> tuple[str, ...]:
    """Host names, `*.suffix` patterns or `*`, separated by spaces or commas (API_ALLOWED_HOSTS)."""
    hosts = parse_list(raw.replace(",", " "))
    for host in hosts:
        if not re.fullmatch(r"\*|(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?|\[?[0-9A-Fa-f:.]+\]?", host):
            raise ValueError(f"{host!r} is not a host name, *.suffix or *")
    return hosts


def parse_url(raw: str) -> str:
    """An http(s) URL as the fetch policy parses it (WEBHOOK_URL); where it points is checked at use."""
    value = raw.strip()
    try:
        parse_target(value)
    except AppError as exc:  # url_forbidden:scheme|userinfo|invalid
        raise ValueError(exc.detail) from None
    return value


def bucket_parser(problem: Callable[[str], str | None]) -> Callable[[str], str]:
    """A bucket name checked at start-up by its store's naming rules (`problem`): a GCS_BUCKET
    Google would refuse, or an S3_BUCKET S3 would, must not wait for the first upload."""
    def parse(raw: str) -> str:
        value = raw.strip()
        found = value and problem(value)
        if found:
            raise ValueError(found)
        return value
    return parse


def buckets_parser(parse_one: Callable[[str], str]) -> Callable[[str], tuple[str, ...]]:
    """A list of bucket names, space or comma separated, each checked by `parse_one`."""
    def parse(raw: str) -> tuple[str, ...]:
        return tuple(parse_one(name) for name in parse_list(raw.replace(",", " ")))
    return parse


parse_bucket = bucket_parser(gcs_names.bucket_problem)
parse_buckets = buckets_parser(parse_bucket)
parse_s3_bucket = bucket_parser(s3_names.bucket_problem)
parse_s3_buckets = buckets_parser(parse_s3_bucket)


def parse_presign_ttl(raw: str) -> int:
    # SigV4 presigned URLs are valid for at most 7 days; S3 refuses a longer one when it is used.
    value = parse_int(raw)
    if not 0 <= value <= 604800:
        raise ValueError("expected 0 (no presigned URL) to 604800 seconds (7 days)")
    return value


def parse_output_mode(raw: str) -> str:
    # The registry is read at each parse: a destination added to it is a valid OUTPUT_MODE.
    return choice(*output_registry.output_modes())(raw)


parse_output_mode.__doc__ = " | ".join(output_registry.output_modes())


def parse_comfy_gpus(raw: str) -> str | int | tuple[str, ...]:
    """`auto`, a count (`4`: GPUs 0-3) or a comma list of GPU indices or UUIDs (`2,3`; one GPU: `3,`)."""
    text = raw.strip().lower()
    if text == "auto":
        return "auto"
    if "," not in text:
        count = parse_int(text)
        if not 1 <= count <= 64:
            raise ValueError("a count of ComfyUI backends is 1-64")
        return count
    gpus = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not gpus or len(set(gpus)) != len(gpus) or not all(re.fullmatch(r"[0-9]+|(GPU|MIG)-[0-9A-Za-z-]+", g) for g in gpus):
        raise ValueError("list distinct GPU indices (0,1) or UUIDs (GPU-…), comma separated")
    return gpus


def choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError("expected one of " + ", ".join(options))
        return value

    parse.__doc__ = " | ".join(options)
    return parse


Default = Any  # a value, or a callable taking the partly built values dict


@dataclass(frozen=True)
class Setting:
    attr: str
    env: tuple[str, ...]  # first name is canonical, the rest are accepted aliases
    parse: Callable[[str], Any]
    local: Default
    image: Default
    doc: str
    secret: bool = False
    group: str = "general"

    def default(self, profile: str, values: Mapping[str, Any]) -> Any:
        chosen = self.local if profile == "local" else self.image
        return chosen(values) if callable(chosen) else chosen


def _under(base_attr: str, *parts: str) -> Callable[[Mapping[str, Any]], Path]:
    def default(values: Mapping[str, Any]) -> Path:
        return Path(values[base_attr], *parts)

    default.label = "/".join((f"${base_attr.upper()}",) + parts)  # type: ignore[attr-defined]
    return default


def _same(attr: str) -> Callable[[Mapping[str, Any]], Any]:
    def default(values: Mapping[str, Any]) -> Any:
        return values[attr]

    default.label = f"${attr.upper()}"  # type: ignore[attr-defined]
    return default


def _active_versions(values: Mapping[str, Any]) -> tuple[str, ...]:
    return (values["default_version_id"],) if values["default_version_id"] else ()


_active_versions.label = "$DEFAULT_VERSION_ID"  # type: ignore[attr-defined]


# Order matters: a derived default may only read settings listed above it.
SETTINGS: tuple[Setting, ...] = (
    Setting("profile", ("APPLIANCE_PROFILE",), choice(*PROFILES), "local", "image",
            "Which column of defaults applies: `local` (a checkout) or `image` (the container; set by docker/Dockerfile)."),
    Setting("launch_mode", ("LAUNCH_MODE",), choice("api", "serverless", "cli"), "serverless", "serverless",
            "`api`: Pod mode under supervisord; `serverless`: the RunPod handler; `cli`: the command line runner.", group="modes"),
    Setting("runpod_serverless", ("RUNPOD_SERVERLESS",), parse_bool, False, False,
            "`1` forces serverless mode whatever `LAUNCH_MODE` says.", group="modes"),
    Setting("data_root", ("DATA_ROOT",), parse_path, REPO_ROOT / ".data", Path("/workspace"),
            "Root of everything the appliance writes (on a Pod: the volume, e.g. `/runpod-volume`).", group="paths"),
    Setting("comfy_home", ("COMFY_HOME",), parse_path, _under("data_root", "ComfyUI"), _under("data_root", "ComfyUI"),
            "A ComfyUI checkout (`main.py` inside) to run for every job, whatever version it names "
            "(developer mode: no install, no switching). Unset, each job runs its installed version.", group="paths"),
    Setting("comfy_cache_root", ("COMFY_CACHE_ROOT",), parse_path, _same("data_root"), _same("data_root"),
            "Root of the shared, verified model cache; models live in `COMFY_CACHE_ROOT/models/<type>/`.", group="paths"),
    Setting("models_dir", ("MODELS_DIR", "COMFYUI_MODEL_DIR"), parse_path,
            _under("comfy_cache_root", "models"), _under("comfy_cache_root", "models"),
            "Model folder ComfyUI reads and `/download` fills (`COMFYUI_MODEL_DIR` is accepted too). "
            "By default it is the cache's own `models/` folder, so there is one copy of each model.", group="paths"),
    Setting("versions_dir", ("VERSIONS_DIR",), parse_path, REPO_ROOT / "versions", REPO_ROOT / "versions",
            "Folder of version specs `<id>.json`.", group="paths"),
    Setting("versions_root", ("VERSIONS_ROOT",), parse_path, _under("data_root", "versions"), _under("data_root", "versions"),
            "Where installed version environments live (`<root>/<id>/`).", group="paths"),
    Setting("state_db", ("STATE_DB",), parse_path, _under("data_root", "state", "appliance.db"),
            _under("data_root", "state", "appliance.db"),
            "SQLite database of jobs and downloads (WAL), shared by the Pod programs.", group="paths"),
    Setting("comfy_io_dir", ("COMFY_IO_DIR",), parse_path, _under("data_root", "comfy"), _under("data_root", "comfy"),
            "ComfyUI's `input/`, `output/`, `temp/` and `user/` folders, shared by every version.", group="paths"),
    Setting("run_dir", ("RUN_DIR",), parse_path, _under("data_root", "run"), _under("data_root", "run"),
            "Sockets, pid files and generated config (extra_model_paths.yaml).", group="paths"),
    Setting("log_dir", ("LOG_DIR",), parse_path, _under("data_root", "logs"), _under("data_root", "logs"),
            "Rotated log files of every program.", group="paths"),
    Setting("comfy_python", ("COMFY_PYTHON",), parse_path, Path(sys.executable), Path(sys.executable),
            "Interpreter that runs `COMFY_HOME`'s `main.py` in developer mode (installed versions use their own "
            "virtualenv).", group="comfy"),
    Setting("comfy_host", ("COMFY_HOST",), parse_str, "127.0.0.1", "127.0.0.1",
            "Address ComfyUI listens on. Keep it loopback: ComfyUI has no authentication.", group="comfy"),
    Setting("comfy_port", ("COMFY_PORT",), parse_port, 8188, 8188, "Port ComfyUI listens on.", group="comfy"),
    Setting("comfy_gpus", ("COMFY_GPUS",), parse_comfy_gpus, "auto", "auto",
            "Pod mode: how many ComfyUI programs run, one per GPU, each pinned to it (`CUDA_VISIBLE_DEVICES`) "
            "on its own port from `COMFY_PORT` up. `auto`: one per GPU that `CUDA_VISIBLE_DEVICES` or the "
            "`/dev/nvidia<N>` nodes show, one on a machine without GPU; a count (`4`); or GPU indices or "
            "UUIDs, comma separated (`2,3`; a single one: `3,`). Serverless always runs one.", group="comfy"),
    Setting("comfy_url", ("COMFY_URL",), parse_str, "", "",
            "Use an already running ComfyUI at this URL instead of starting one (CLI and tests).", group="comfy"),
    Setting("comfy_extra_args", ("COMFY_EXTRA_ARGS",), parse_list, (), (),
            "Extra command-line arguments for ComfyUI, space separated (e.g. `--lowvram`).", group="comfy"),
    Setting("comfy_cpu", ("COMFY_CPU",), parse_auto_bool, "auto", "auto",
            "`auto`: ComfyUI gets `--cpu` on a Linux machine without a GPU device node (`/dev/nvidiactl`, "
            "`/dev/nvidia<N>`, `/dev/kfd`, `/dev/dxg`; macOS is left to ComfyUI); `1`: always; `0`: the "
            "appliance never adds it.", group="comfy"),
    Setting("comfy_start_timeout", ("COMFY_START_TIMEOUT",), parse_seconds, 600.0, 600.0,
            "Seconds to wait for ComfyUI to answer after start (the wait ends at once if it exits).", group="comfy"),
    Setting("job_timeout", ("JOB_TIMEOUT",), parse_seconds, 3600.0, 3600.0,
            "Seconds one job may run in ComfyUI before it is interrupted and fails with `job_timeout`.", group="jobs"),
    Setting("job_max_attempts", ("JOB_MAX_ATTEMPTS",), at_least(1), 2, 2,
            "Times a job is handed to ComfyUI: a job whose prompt died with ComfyUI (`comfy_crashed`, "
            "`comfy_stalled`, or ComfyUI gone before the prompt was queued) is submitted again once ComfyUI is "
            "back, until this many attempts; then it fails with the last code (a job that crashes ComfyUI every "
            "time stops there, and the next job runs). Counted with the job in the Pod's store.", group="jobs"),
    Setting("stall_timeout", ("STALL_TIMEOUT",), parse_seconds, 600.0, 600.0,
            "Seconds a running prompt may go without a sign of life (a websocket event for it: a node starting, a "
            "progress step, a node's output) before it is interrupted; a version spec's `stall_timeout` overrides "
            "it for slow nodes (long video decodes). `0`: no stall watchdog.", group="jobs"),
    Setting("stall_grace", ("STALL_GRACE",), parse_seconds, 15.0, 15.0,
            "Seconds a stalled prompt gets to end after its interrupt; then ComfyUI is killed and restarted "
            "(through supervisord in Pod mode) and the job fails with `comfy_stalled`.", group="jobs"),
    Setting("comfy_hang_timeout", ("COMFY_HANG_TIMEOUT",), parse_seconds, 120.0, 120.0,
            "Pod mode: seconds a running `comfyui` program may go without answering HTTP (idle or busy: ComfyUI "
            "answers while nodes run) before it is killed and restarted. `0`: never.", group="comfy"),
    Setting("auto_install_versions", ("AUTO_INSTALL_VERSIONS",), parse_bool, False, False,
            "`1`: a job naming a version that is not installed installs it first (else `version_not_installed`), "
            "and so does `python -m services.pod` for the version its ComfyUI starts with (locally it always does).",
            group="jobs"),
    Setting("default_version_id", ("DEFAULT_VERSION_ID",), parse_str, "demo", "",
            "Version used by jobs that name none (empty: `version_id` is required), and the one Pod mode's "
            "ComfyUI runs from the start. Locally `python -m services.pod` installs it first when it is "
            "missing.", group="jobs"),
    Setting("workflow_url_max_bytes", ("WORKFLOW_URL_MAX_BYTES",), parse_int, 10 * 2**20, 10 * 2**20,
            "Largest workflow accepted from `workflow_url`.", group="jobs"),
    Setting("workflow_url_timeout", ("WORKFLOW_URL_TIMEOUT",), parse_seconds, 15.0, 15.0,
            "Seconds allowed to fetch `workflow_url`.", group="jobs"),
    Setting("job_models_max_bytes", ("JOB_MODELS_MAX_BYTES",), at_least(0), 20 * 2**30, 20 * 2**30,
            "Most bytes of models one job may bring with `models` (declared sizes at submission, fetched bytes "
            "while it runs); `0` refuses per-job models.", group="jobs"),
    Setting("dry_run", ("DRY_RUN",), parse_bool, False, False,
            "`1`: answer success at once without starting ComfyUI (smoke tests).", group="jobs"),
    Setting("no_history", ("NO_HISTORY",), parse_bool, False, False,
            "`1`: results carry only the `prompt_id`.", group="jobs"),
    Setting("job_files_retention", ("JOB_FILES_RETENTION",), parse_seconds, 0.0, 0.0,
            "Seconds a job's uploaded inputs and saved outputs stay in ComfyUI's folders after its result is "
            "delivered (or it failed); `0` removes them at once. Leftovers of a process that died are removed "
            "once they are older than `JOB_TIMEOUT` plus this plus 10 minutes.", group="jobs"),
    Setting("output_mode", ("OUTPUT_MODE",), parse_output_mode, "auto", "auto",
            "Default `output_mode` of a job: `auto` (inline while the result stays within `INLINE_MAX_BYTES`, "
            "the rest to the configured bucket, else kept in `OUTPUT_KEEP_DIR`) or a destination of README's "
            "Outputs table (`base64`, `gcs`, ...).", group="outputs"),
    Setting("inline_max_bytes", ("INLINE_MAX_BYTES",), parse_int, 8 * 2**20, 8 * 2**20,
            "`auto`: base64 characters a result may inline in all (below RunPod's result caps).", group="outputs"),
    Setting("base64_max_bytes", ("BASE64_MAX_BYTES",), parse_int, 16 * 2**20, 16 * 2**20,
            "`base64`: base64 characters a job's outputs may take in all; past it the job fails with "
            "`result_too_large` and its files are kept in `OUTPUT_KEEP_DIR`.", group="outputs"),
    Setting("output_keep_dir", ("OUTPUT_KEEP_DIR",), parse_path, _under("data_root", "outputs"),
            _under("data_root", "outputs"), "Where outputs are spooled while delivered, and kept when they fit "
            "nowhere (`<job_id>/`); the operator removes kept files.", group="outputs"),
    Setting("allow_plaintext_credentials", ("ALLOW_PLAINTEXT_CREDENTIALS",), parse_bool, False, False,
            "`1`: accept storage credentials (`gcs_credentials`, ...) in a plaintext payload, where the Pod "
            "stores them as sent; otherwise only inside an encrypted one (`credentials_need_encryption`).",
            group="outputs"),
    Setting("gcs_bucket", ("GCS_BUCKET",), parse_bucket, "", "", "Bucket for `gcs` output (or per job `gcs_bucket`).", group="outputs"),
    Setting("gcs_allowed_buckets", ("GCS_ALLOWED_BUCKETS",), parse_buckets, (), (),
            "Buckets a job may upload to, space separated; a job naming another one fails with "
            "`gcs_bucket_not_allowed`. Empty: any bucket the credentials can write.", group="outputs"),
    Setting("gcs_prefix", ("GCS_PREFIX",), parse_str, "comfy/outputs", "comfy/outputs", "Object name prefix for uploads.", group="outputs"),
    Setting("gcs_project", ("GCS_PROJECT", "GOOGLE_CLOUD_PROJECT"), parse_str, "", "",
            "Google Cloud project of the bucket (`GOOGLE_CLOUD_PROJECT` is accepted too).", group="outputs"),
    Setting("google_application_credentials", ("GOOGLE_APPLICATION_CREDENTIALS",), parse_str, "", "",
            "Path of the service-account JSON used for uploads and signed URLs.", group="outputs"),
    Setting("storage_emulator_host", ("STORAGE_EMULATOR_HOST",), parse_str, "", "",
            "Read by google-cloud-storage itself: send GCS calls to an emulator (tests); without "
            "GOOGLE_APPLICATION_CREDENTIALS the appliance then uses anonymous credentials.", group="outputs"),
    Setting("gcs_retries", ("GCS_RETRIES",), parse_int, 3, 3, "Upload attempts before `gcs_upload_failed`.", group="outputs"),
    Setting("gcs_retry_base_sleep", ("GCS_RETRY_BASE_SLEEP",), parse_seconds, 0.5, 0.5,
            "First back-off sleep between upload attempts (doubles each time).", group="outputs"),
    Setting("gcs_public", ("GCS_PUBLIC",), parse_bool, False, False, "Also return the object's public https URL.", group="outputs"),
    Setting("gcs_signed_url_ttl", ("GCS_SIGNED_URL_TTL",), parse_int, 0, 0,
            "Seconds a V4 signed URL stays valid; 0 returns none.", group="outputs"),
    Setting("gcs_validate", ("GCS_VALIDATE",), parse_bool, True, True,
            "Check the bucket is reachable before the first upload.", group="outputs"),
    Setting("s3_bucket", ("S3_BUCKET",), parse_s3_bucket, "", "", "Bucket for `s3` output (or per job `s3_bucket`).", group="outputs"),
    Setting("s3_allowed_buckets", ("S3_ALLOWED_BUCKETS",), parse_s3_buckets, (), (),
            "Buckets a job may upload to with `s3`, space separated; a job naming another one fails with "
            "`s3_bucket_not_allowed`. Empty: any bucket the credentials can write.", group="outputs"),
    Setting("s3_prefix", ("S3_PREFIX",), parse_str, "comfy/outputs", "comfy/outputs", "Key prefix for `s3` uploads.", group="outputs"),
    Setting("s3_endpoint_url", ("S3_ENDPOINT_URL",), parse_url, "", "",
            "S3-compatible endpoint (Cloudflare R2, MinIO, GCS interoperability); empty: AWS. Credentials come "
            "from the standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, "
            "`AWS_PROFILE`).", group="outputs"),
    Setting("s3_region", ("S3_REGION",), parse_str, "", "",
            "Region of the bucket (`auto` for R2); empty: `AWS_REGION`/`AWS_DEFAULT_REGION` or boto3's default.",
            group="outputs"),
    Setting("s3_signed_url_ttl", ("S3_SIGNED_URL_TTL",), parse_presign_ttl, 0, 0,
            "Seconds a presigned GET URL (`signed_url`) stays valid, at most 604800; 0 returns none.", group="outputs"),
    Setting("s3_multipart_threshold", ("S3_MULTIPART_THRESHOLD",), at_least(5 * 2**20), 64 * 2**20, 64 * 2**20,
            "Bytes from which an output is uploaded in parts (8 MiB each, in parallel).", group="outputs"),
    Setting("s3_retries", ("S3_RETRIES",), at_least(1), 3, 3, "Upload attempts before `s3_upload_failed`.", group="outputs"),
    Setting("s3_retry_base_sleep", ("S3_RETRY_BASE_SLEEP",), parse_seconds, 0.5, 0.5,
            "First back-off sleep between `s3` upload attempts (doubles each time).", group="outputs"),
    Setting("provenance_png", ("PROVENANCE_PNG",), parse_bool, False, False,
            "`1`: PNG outputs gain an `appliance-provenance` text chunk (the result's `provenance` as JSON); "
            "the pixels are not re-encoded.", group="outputs"),
    Setting("api_host", ("API_HOST",), parse_str, "127.0.0.1", "0.0.0.0",
            "Address the Pod API binds. Anything but loopback needs `API_TOKEN` (or `ALLOW_UNAUTHENTICATED=1`): "
            "without it Pod mode refuses to start.", group="api"),
    Setting("api_port", ("API_PORT",), parse_port, 8000, 8000, "Port the Pod API binds.", group="api"),
    Setting("api_token", ("API_TOKEN",), parse_str, "", "",
            "When set, every API route but /healthz, /readyz, /openapi.json and the pages (`/`, `/docs`) needs "
            "`Authorization: Bearer <token>` or the status page's session cookie (`POST /session`) "
            "(and /healthz and /readyz show their details only with it).", secret=True, group="api"),
    Setting("api_session_ttl", ("API_SESSION_TTL",), at_least(60), 43200, 43200,
            "Seconds the status page's login (`POST /session`) lasts: its session cookie, which stands for "
            "`API_TOKEN` on every route, expires then.", group="api"),
    Setting("allow_unauthenticated", ("ALLOW_UNAUTHENTICATED",), parse_bool, False, False,
            "`1`: serve a non-loopback `API_HOST` without `API_TOKEN` (anyone who reaches the port may run "
            "jobs). Without it such a start is refused.", group="api"),
    Setting("metrics_public", ("METRICS_PUBLIC",), parse_bool, False, False,
            "`1`: serve `GET /metrics` without `API_TOKEN` (for a Prometheus that cannot send a bearer token). "
            "The metrics name versions, programs and GPUs, nothing of any job's payload.", group="api"),
    Setting("api_allowed_hosts", ("API_ALLOWED_HOSTS",), parse_hosts, (), ("*.proxy.runpod.net",),
            "Host names the API answers besides loopback (`127.0.0.1`, `localhost`, `[::1]`), the bound "
            "address and the Pod's own proxy name: names, `*.suffix` patterns or `*` (any), space separated. "
            "Other `Host` headers get 421 `host_not_allowed` (DNS rebinding).", group="api"),
    Setting("runpod_pod_id", ("RUNPOD_POD_ID",), parse_str, "", "",
            "Set by RunPod on Pods: the API also answers `<id>-<API_PORT>.proxy.runpod.net`.", group="api"),
    Setting("comfy_ui_proxy", ("COMFY_UI_PROXY",), parse_bool, False, False,
            "`1`: Pod mode serves ComfyUI's own web UI (the graph editor) at `/comfy/` on the API port, behind "
            "the API's token or session, HTTP and websocket, while ComfyUI itself stays on loopback. Off: "
            "`/comfy/` is 404.", group="api"),
    Setting("worker_private_key_b64", ("WORKER_PRIVATE_KEY_B64",), parse_str, "", "",
            "Curve25519 private key (base64) that opens encrypted payloads.", secret=True, group="security"),
    Setting("encryption_required", ("ENCRYPTION_REQUIRED",), parse_bool, False, False,
            "`1`: refuse plaintext payloads with `encryption_required`.", group="security"),
    Setting("envelope_max_age", ("ENVELOPE_MAX_AGE",), parse_seconds, 0.0, 0.0,
            "Seconds an encrypted payload stays acceptable: when set, the sealed payload must carry `ts` (unix "
            "seconds, `seal_request` adds it) no older than this and at most 60 s ahead, else "
            "`envelope_expired`. `0`: no age limit (replays are still refused).", group="security"),
    Setting("hf_token", ("HF_TOKEN",), parse_str, "", "", "Token sent to Hugging Face hosts only.", secret=True, group="models"),
    Setting("civitai_token", ("CIVITAI_TOKEN",), parse_str, "", "", "Token sent to Civitai hosts only.", secret=True, group="models"),
    Setting("fetch_allow_hosts", ("FETCH_ALLOW_HOSTS",), parse_allow_hosts, (), (),
            "Hosts that URLs fetched for a caller (`workflow_url`, image URLs, `/download`, model URLs) may reach "
            "although their address is not public: names, IP addresses or CIDR networks, space or comma "
            "separated (an on-prem mirror, a test server). Empty: only public addresses.", group="security"),
    Setting("fetch_allow_private", ("FETCH_ALLOW_PRIVATE",), parse_bool, False, False,
            "`1`: those fetches may also reach loopback and private addresses (RFC 1918, 100.64/10, fc00::/7); "
            "link-local (cloud metadata), multicast and reserved ones, and the appliance's own ports, stay "
            "refused.", group="security"),
    Setting("runpod_webhook_post_output", ("RUNPOD_WEBHOOK_POST_OUTPUT",), parse_str, "", "",
            "Set by RunPod on serverless workers; job progress updates are sent only when it is present.",
            group="modes"),
    Setting("runpod_debug_level", ("RUNPOD_DEBUG_LEVEL",), choice("debug", "info", "warn", "error"), "info", "info",
            "The runpod SDK's log level. Not `debug` in production: at DEBUG the SDK logs every handler "
            "output verbatim.", group="modes"),
    Setting("shutdown_grace", ("SHUTDOWN_GRACE",), parse_seconds, 20.0, 20.0,
            "Serverless worker: seconds a running job may still take after SIGTERM or SIGINT (RunPod scaling "
            "down); then it is interrupted and fails with `worker_shutdown`, ComfyUI is stopped and the worker "
            "exits 0. RunPod kills a worker that is still running some time after SIGTERM: keep this below that.",
            group="modes"),
    # --- pod programs ---
    Setting("supervisor_socket", ("SUPERVISOR_SOCKET",), parse_str, "", "",
            "Unix socket of supervisord, for /healthz's program list (set by etc/supervisord.conf).", group="pod"),
    Setting("api_workers", ("API_WORKERS",), parse_int, 1, 1,
            "gunicorn worker processes of the Pod API (each runs jobs too). One event loop already keeps "
            "thousands of requests waiting; more workers cost about 60 MB each.", group="pod"),
    Setting("api_job_concurrency", ("API_JOB_CONCURRENCY",), parse_int, 16, 16,
            "Jobs one API worker keeps in ComfyUI's queue at once (ComfyUI still runs them one by one).",
            group="pod"),
    Setting("queue_max_jobs", ("QUEUE_MAX_JOBS",), at_least(0), 1000, 1000,
            "Jobs the Pod holds queued or running, all API workers together; at this many `/run` answers 503 "
            "`queue_full` with `Retry-After` and stores nothing, and `/readyz` says not ready. `0`: no bound.",
            group="pod"),
    Setting("webhook_url", ("WEBHOOK_URL",), parse_url, "", "",
            "Pod mode: URL every job that names no `webhook_url` of its own is POSTed to when it ends "
            "(succeeded, failed, cancelled), signed the Standard Webhooks way; it obeys the fetch policy "
            "(`FETCH_ALLOW_HOSTS`, `FETCH_ALLOW_PRIVATE`). Needs `WEBHOOK_SECRET`. Serverless: use RunPod's own "
            "`webhook`.", group="webhooks"),
    Setting("webhook_secret", ("WEBHOOK_SECRET",), parse_secret, "", "",
            "`whsec_<base64>` of 24 to 64 random bytes that signs webhooks (`webhook-signature`); give the "
            "receiver the same string. Without it the Pod refuses `WEBHOOK_URL` at start and jobs naming "
            "`webhook_url` with `webhooks_unavailable`.", secret=True, group="webhooks"),
    Setting("webhook_max_bytes", ("WEBHOOK_MAX_BYTES",), at_least(1024), 1048576, 1048576,
            "Largest webhook body; a job whose view is larger is sent without its `result`, with "
            "`result_omitted: true` and `href` (the `GET /jobs/{id}` path to fetch it from).", group="webhooks"),
    Setting("webhook_attempts", ("WEBHOOK_ATTEMPTS",), at_least(1), 6, 6,
            "Delivery attempts of one webhook; 2xx is delivered, 4xx other than 408/429 (or a refused URL) "
            "gives up at once, the rest is retried.", group="webhooks"),
    Setting("webhook_retry_base", ("WEBHOOK_RETRY_BASE",), parse_seconds, 10.0, 10.0,
            "Seconds before the second attempt; each later wait doubles (10, 20, 40, 80, 160 s: about 5 "
            "minutes over 6 attempts), a longer `Retry-After` replaces it, none exceeds 600 s.", group="webhooks"),
    Setting("webhook_timeout", ("WEBHOOK_TIMEOUT",), parse_seconds, 10.0, 10.0,
            "Seconds one delivery attempt may take before it counts as failed (and is retried).", group="webhooks"),
    Setting("nvidia_smi", ("NVIDIA_SMI",), parse_str, "nvidia-smi", "nvidia-smi",
            "The nvidia-smi command gpuwatch runs.", group="pod"),
    Setting("gpu_poll_interval", ("GPU_POLL_INTERVAL",), parse_seconds, 5.0, 5.0,
            "Seconds between gpuwatch probes.", group="pod"),
    Setting("gpu_probe_timeout", ("GPU_PROBE_TIMEOUT",), parse_seconds, 5.0, 5.0,
            "Seconds before a hanging nvidia-smi is abandoned (GPU state `unknown`).", group="pod"),
    # --- versions ---
    Setting("versions_base_python", ("VERSIONS_BASE_PYTHON",), parse_path, _same("comfy_python"), _same("comfy_python"),
            "Interpreter whose environment (torch and the other heavy packages) every installed version's "
            "virtualenv is layered over.", group="versions"),
    Setting("versions_pip_args", ("VERSIONS_PIP_ARGS",), parse_list, (), (),
            "Extra pip arguments for version installs, space separated (e.g. `--no-index --find-links /wheels`).",
            group="versions"),
    Setting("versions_lock_timeout", ("VERSIONS_LOCK_TIMEOUT",), parse_seconds, 1800.0, 1800.0,
            "Seconds an installer waits for another installer of the same version before `version_busy`.",
            group="versions"),
    # --- model store ---
    Setting("download_segments", ("DOWNLOAD_SEGMENTS",), at_least(1), 4, 4,
            "Parallel ranged connections for one big model file; `1` downloads every file in one stream.",
            group="models"),
    Setting("download_segment_min_bytes", ("DOWNLOAD_SEGMENT_MIN_BYTES",), at_least(1), 64 * 2**20, 64 * 2**20,
            "Files smaller than this are downloaded in one stream, whatever `DOWNLOAD_SEGMENTS` says.", group="models"),
    Setting("download_piece_bytes", ("DOWNLOAD_PIECE_BYTES",), at_least(65536), 8 * 2**20, 8 * 2**20,
            "Bytes per ranged request of a segmented download; memory use is about "
            "(`DOWNLOAD_SEGMENTS` + 2) times this.", group="models"),
    Setting("download_retries", ("DOWNLOAD_RETRIES",), at_least(0), 5, 5,
            "Retries after a dropped connection, a stall, 429 or 5xx, counted since the last byte that arrived.",
            group="models"),
    Setting("download_retry_base_sleep", ("DOWNLOAD_RETRY_BASE_SLEEP",), parse_seconds, 1.0, 1.0,
            "First back-off sleep between download retries; it doubles each time, a `Retry-After` "
            "header replaces it, and no sleep exceeds 60 s.", group="models"),
    Setting("download_timeout", ("DOWNLOAD_TIMEOUT",), parse_seconds, 60.0, 60.0,
            "Seconds a download connection may stay silent before it is dropped and retried.", group="models"),
    Setting("download_locks", ("DOWNLOAD_LOCKS",), parse_bool, True, True,
            "`0` turns the cross-process download lock into a no-op. Only for tests that mimic a network "
            "filesystem whose locks do nothing.", group="models"),
    Setting("download_lock_stale", ("DOWNLOAD_LOCK_STALE",), parse_seconds, 60.0, 60.0,
            "Seconds without a heartbeat after which a download lock or partial file of another host "
            "counts as abandoned (on this host a dead pid is enough).", group="models"),
    Setting("active_versions", ("ACTIVE_VERSIONS",), parse_list, _active_versions, _active_versions,
            "Versions whose models `modelsync` keeps present and verified, space separated.", group="models"),
    Setting("modelsync_poll_interval", ("MODELSYNC_POLL_INTERVAL",), parse_seconds, 5.0, 5.0,
            "Seconds `modelsync` sleeps when no download is queued before it looks again.", group="models"),
    Setting("model_cache_max_bytes", ("MODEL_CACHE_MAX_BYTES",), at_least(0), 0, 0,
            "Size budget of the model cache (`COMFY_CACHE_ROOT/models`) in bytes; past it `modelsync` evicts the "
            "least recently used models, never those of `ACTIVE_VERSIONS`, of running jobs or being downloaded "
            "(README's Model cache). `0`: no budget.", group="models"),
    Setting("log_silent", ("LOG_SILENT",), parse_bool, False, False,
            "`1`: suppress informational logs (errors are still written).", group="logs"),
    Setting("log_level", ("LOG_LEVEL",), choice("debug", "info", "warning", "error"), "info", "info",
            "Lowest level written when not silent.", group="logs"),
)

SETTINGS_BY_ATTR = {s.attr: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Parsed, typed settings. Build with `Settings.from_env()`; never read os.environ elsewhere."""

    values: Mapping[str, Any] = field(repr=False)
    explicit: frozenset[str] = frozenset()  # attrs whose value came from the environment

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        env = os.environ if environ is None else environ
        profile = _read(SETTINGS[0], env, None)
        values: dict[str, Any] = {"profile": profile if profile is not None else "local"}
        explicit = {"profile"} if profile is not None else set()
        for setting in SETTINGS[1:]:
            if setting.attr in overrides:
                values[setting.attr] = overrides[setting.attr]
                explicit.add(setting.attr)
                continue
            parsed = _read(setting, env, values)
            if parsed is not None:
                explicit.add(setting.attr)
            values[setting.attr] = parsed if parsed is not None else setting.default(values["profile"], values)
        return cls(values, frozenset(explicit))

    def is_set(self, attr: str) -> bool:
        """Whether the environment chose this value (as opposed to a default)."""
        return attr in self.explicit

    def replace(self, **changes: Any) -> "Settings":
        unknown = set(changes) - set(SETTINGS_BY_ATTR)
        if unknown:
            raise AttributeError(", ".join(sorted(unknown)))
        return Settings({**self.values, **changes}, self.explicit | set(changes))

    @property
    def mode(self) -> str:
        return "serverless" if self.runpod_serverless else self.launch_mode

    def public_dict(self) -> dict[str, Any]:
        """Values safe to show or log: secrets become whether they are set."""
        shown = {}
        for setting in SETTINGS:
            value = self.values[setting.attr]
            if setting.secret:
                value = "<set>" if value else ""
            shown[setting.env[0]] = str(value) if isinstance(value, Path) else value
        return shown


def _read(setting: Setting, env: Mapping[str, str], values: Mapping[str, Any] | None) -> Any:
    for name in setting.env:
        raw = env.get(name)
        if raw is None:
            continue
        if raw.strip() == "" and setting.parse is not parse_str:
            continue  # an empty variable means "unset" for typed settings
        try:
            return setting.parse(raw)
        except ValueError as exc:
            shown = "<secret>" if setting.secret else repr(raw)
            raise SettingsError(f"invalid setting {name}={shown}: {exc}") from None
    return None


T = TypeVar("T")


def or_exit(check: Callable[[], T]) -> T:
    """Entry points run settings checks through this: a SettingsError ends start-up with one
    clear line, status 2."""
    try:
        return check()
    except SettingsError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def load_or_exit(environ: Mapping[str, str] | None = None) -> Settings:
    return or_exit(lambda: Settings.from_env(environ))


def markdown_table() -> str:
    def shown(default: Default) -> str:
        if callable(default):
            return f"`{default.label}`"
        if isinstance(default, tuple):
            return " ".join(default) or "(empty)"
        if isinstance(default, bool):
            return "1" if default else "0"
        if isinstance(default, Path):
            try:
                return "`<checkout>/" + str(default.relative_to(REPO_ROOT)) + "`"
            except ValueError:
                return "python running the appliance" if default == Path(sys.executable) else f"`{default}`"
        return f"`{default}`" if default != "" else "(empty)"

    rows = ["| Variable | Local default | Image default | Meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        names = " / ".join(f"`{n}`" for n in s.env)
        rows.append(f"| {names} | {shown(s.local)} | {shown(s.image)} | {s.doc} |")
    return "\n".join(rows)
