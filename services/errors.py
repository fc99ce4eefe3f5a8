"""Errors as values: every failure the appliance reports has a stable code from this catalogue.

A code is a fixed prefix, optionally followed by `:<specifics>` (`comfy_init_failed:timeout`,
`unknown_version:demo`). The catalogue gives each prefix its HTTP status, whether it means the
worker itself is broken for good (`fatal`: the serverless handler refuses later jobs and asks
RunPod for a new worker at once),
and the sentence README's error reference shows (`python -m services errors --markdown`).
Details are written for the caller and must never contain secrets or payload plaintext.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Code:
    prefix: str
    status: int
    meaning: str
    fatal: bool = False
    suffix: str = ""  # how the specifics after ':' read in the docs, e.g. "<reason>"


CATALOGUE: dict[str, Code] = {c.prefix: c for c in (
    # Payload and workflow (4xx: the caller can fix them)
    Code("invalid_json", 400, "The request body is not valid JSON."),
    Code("invalid_payload", 400, "The payload is not an object or a field has the wrong type.", suffix="<field>"),
    Code("missing_workflow", 400, "Neither `workflow` nor `workflow_url` was given."),
    Code("workflow_conflict", 400, "Both `workflow` and `workflow_url` were given; send one."),
    Code("invalid_workflow", 400, "The workflow is not an API-format prompt (a JSON object of nodes with `class_type` and `inputs`), or is one saved by the editor that does not convert unambiguously (`ui_format`: the detail names the node and why).", suffix="<why>"),
    Code("workflow_url_invalid", 400, "`workflow_url` is not an http(s) URL."),
    Code("workflow_url_failed", 400, "Fetching `workflow_url` failed: HTTP status, `timeout`, `too_large` or `unreachable`.", suffix="<status|why>"),
    Code("url_forbidden", 400, "A URL fetched for the caller (`workflow_url`, an image `url`, `/download`, or a redirect of one of them) or called back (a job's `webhook_url`) is refused before any connection: `scheme` (not http/https), `userinfo` (`user:pass@`), `invalid` (a host other parsers could read differently), `loopback`, `unspecified`, `link_local` (cloud metadata), `private` (RFC 1918, 100.64/10, fc00::/7), `multicast`, `reserved`, `own_service` (the appliance's own ports) or `unresolvable`. `FETCH_ALLOW_HOSTS` and `FETCH_ALLOW_PRIVATE` open non-public addresses.", suffix="<why>"),
    Code("workflow_rejected", 400, "The workflow cannot run on this version. `missing_nodes` / `missing_models`: found before ComfyUI was asked (pre-flight, services/jobs/preflight.py): node classes this ComfyUI lacks and model names its loaders do not list, all of them at once in `missing_nodes: [{node_id, class_type, suggestions}]` and `missing_models: [{node_id, class_type, input, name, suggestions}]` (`suggestions`: close matches); a missing node wins the code when both occur. Otherwise ComfyUI refused it at validation (`<comfy error type>`) and `node_errors` holds ComfyUI's own per-node errors.", suffix="<missing_nodes|missing_models|comfy error type>"),
    Code("missing_version_id", 400, "The job names no `version_id` and no `DEFAULT_VERSION_ID` is set."),
    Code("invalid_version_id", 400, "A version id must be letters, digits, `.`, `_` or `-` (no `/`, no `..`).", suffix="<id>"),
    Code("unknown_version", 404, "No `versions/<id>.json` exists for that id.", suffix="<id>"),
    Code("invalid_version_spec", 500, "The version spec breaks versions/schema.json; `<where>` is the JSON path.", suffix="<id>:<where>"),
    Code("invalid_output_mode", 400, "`output_mode` must be `auto` or a destination of README's Outputs table (`base64`, `gcs`, ...)."),
    Code("credentials_need_encryption", 400, "Storage credentials (`gcs_credentials`, ...) came in a plaintext payload; send them only inside an encrypted one (or set `ALLOW_PLAINTEXT_CREDENTIALS=1`).", suffix="<field>"),
    Code("invalid_input_image", 400, "An entry of `images` is malformed (name, base64 or URL).", suffix="<name>"),
    Code("forbidden_input", 400, "A file input of the workflow (LoadImage, LoadImageMask, LoadVideo, LoadAudio, ...) names something other than one of the job's own `images` or a file the version ships: another job's folder, a `[output]`/`[temp]`/`[input]` annotation, an absolute or `..` path, a backslash, a control character, a link or a non-string. Refused before ComfyUI sees the workflow.", suffix="<node_id>"),
    Code("unknown_param", 400, "`params` names a parameter the version does not declare; `detail` lists those it does (`GET /versions/<id>`).", suffix="<name>"),
    Code("invalid_param", 400, "A value of `params` does not fit its declaration: the wrong type (`true` is not a number, a number is not a string), a number outside `min`/`max` or beyond 64 bits, NaN or infinity, or not one of an enum's `choices`.", suffix="<name>"),
    Code("params_conflict", 400, "`params` came with the job's own `workflow` or `workflow_url`: parameters are declared over the version's default workflow; use `overrides` with your own."),
    Code("invalid_override", 400, "An `overrides` entry names a node the workflow lacks, an input the node does not have in the prompt (inputs are not added) or one that is a link, an input a `params` value sets too, or a value that is not a string, finite number or `true`/`false` (a list would be a link).", suffix="<node_id>[:<input>]"),
    Code("unauthorized", 401, "`API_TOKEN` is set and the request lacks `Authorization: Bearer <token>` (the scheme in any case) and a live session cookie of `POST /session`, or `POST /session` got the wrong token."),
    Code("not_found", 404, "No such route, job or download."),
    Code("method_not_allowed", 405, "The route exists but not with this HTTP method."),
    Code("payload_too_large", 413, "The request body is larger than the API accepts."),
    Code("json_too_deep", 400, "The JSON nests deeper than 64 levels (arrays and objects)."),
    Code("unsupported_media_type", 415, "A request body must be sent as `Content-Type: application/json` (charset UTF-8)."),
    Code("host_not_allowed", 421, "The `Host` header names no host this API serves (loopback, `API_ALLOWED_HOSTS`, the Pod's proxy name); 400 when it is missing or malformed."),
    Code("origin_not_allowed", 403, "A request through `/comfy/` (ComfyUI's own UI, `COMFY_UI_PROXY=1`) carries an `Origin` that is not the server it was sent to, or comes from another site's page (`Sec-Fetch-Site`): another site may not drive ComfyUI with the visitor's session (CSRF); a websocket upgrade is refused the same way (HTTP 403)."),
    Code("queue_full", 503, "`QUEUE_MAX_JOBS` jobs are queued or running, so `/run` stored nothing; send it again after the `Retry-After` header's seconds. A retry naming a `job_id` that exists still gets that job."),
    Code("idempotency_conflict", 409, "The `Idempotency-Key` of this `/run` was used before with a different request body (`job_id` names that job); nothing was stored. Use a new key for a new request."),
    Code("webhooks_unavailable", 400, "The job names a `webhook_url` but this Pod has no `WEBHOOK_SECRET` to sign webhooks with (they are never sent unsigned); nothing was stored. Drop the field, or set the secret."),
    Code("internal_error", 500, "A bug: the API met an unexpected error (logged by type, never returned)."),
    Code("store_too_new", 500, "The state database (`STATE_DB`) has a newer schema version than this code knows (a newer appliance wrote it); it is refused, never downgraded: run that appliance version or point `STATE_DB` at another file."),
    # Encryption
    Code("encryption_required", 400, "Plaintext was sent while `ENCRYPTION_REQUIRED=1`; send the encrypted envelope."),
    Code("missing encrypted fields", 400, "The envelope lacks `epk`, `nonce` or `ciphertext`."),
    Code("decryption_failed", 400, "The envelope could not be opened (wrong key, tampered or malformed fields, an all-zero or low-order `epk`)."),
    Code("envelope_replayed", 409, "This envelope (same `epk` and `nonce`) was accepted before; seal the payload again."),
    Code("envelope_expired", 400, "`ENVELOPE_MAX_AGE` is set and the sealed payload's `ts` is missing, older than that, or in the future."),
    Code("encryption_unavailable", 503, "An encrypted payload arrived but no `WORKER_PRIVATE_KEY_B64` is configured."),
    # ComfyUI and execution
    Code("comfy_init_failed", 503, "ComfyUI did not start: `no_comfy_home`, `no_main_py`, `port_in_use`, `import_error`, `exited`, `timeout`. A serverless worker tries again on its next job, and asks to be replaced after two ComfyUI failures in a row.", suffix="<reason>"),
    Code("comfy_unreachable", 503, "ComfyUI does not answer at its URL."),
    Code("comfy_crashed", 502, "ComfyUI died while the job ran (on every attempt, see `JOB_MAX_ATTEMPTS`); it is restarted, and later jobs wait for it."),
    Code("comfy_protocol_error", 502, "ComfyUI answered something the appliance cannot read."),
    Code("comfy_stalled", 504, "The prompt showed no sign of life (no node started, no progress) for `STALL_TIMEOUT` (or the version's `stall_timeout`) and did not end within `STALL_GRACE` of its interrupt; ComfyUI was restarted. Counts as an attempt (`JOB_MAX_ATTEMPTS`)."),
    Code("execution_error", 422, "A node raised during execution; `detail` names the node and ComfyUI's message.", suffix="<node_type>"),
    Code("out_of_memory", 507, "A node ran out of GPU/CPU memory; ComfyUI unloaded its models."),
    Code("gpu_fault", 503, "A node hit a CUDA error that leaves the GPU unusable for the ComfyUI process (illegal memory access, device-side assert, launch failure, uncorrectable ECC, a lost GPU; `fault` names it); every later job there would fail too. The fault is latched until ComfyUI restarts; Pod mode's `/healthz` answers 503 meanwhile.", fatal=True),
    Code("interrupted", 409, "The prompt was interrupted in ComfyUI (by a cancel or by someone else)."),
    Code("cancelled", 409, "The job was cancelled before or while it ran."),
    Code("worker_lost", 502, "The worker process running the job died repeatedly; the job was given up."),
    Code("worker_shutdown", 503, "The serverless worker was told to stop (SIGTERM or SIGINT: RunPod scaling down) and the job did not finish within `SHUTDOWN_GRACE`; it was interrupted and may be sent again."),
    Code("job_timeout", 504, "The job ran longer than `JOB_TIMEOUT` (or its own `timeout`) and was interrupted."),
    Code("no_outputs", 422, "The workflow finished but saved no output file (previews are not results)."),
    Code("output_fetch_failed", 502, "An output listed by ComfyUI could not be read back through `/view`.", suffix="<filename>"),
    Code("output_too_large", 422, "An output file is larger than the appliance accepts for it (`max_bytes` gives the limit); reading stopped there and no partial copy is kept.", suffix="<filename>"),
    # Versions
    Code("version_not_installed", 409, "The job (or, at start, Pod mode's `comfyui` program) names a version that is not installed (or was installed from an older spec) and `AUTO_INSTALL_VERSIONS` is off; run `python -m services versions install <id>`.", suffix="<id>"),
    Code("version_install_failed", 500, "Installing the version failed and left nothing half-built (after `models` the environment is installed; only models are missing). `<what>`: `comfyui_fetch`, `comfyui_commit`, `node_fetch:<name>`, `node_commit:<name>`, `venv`, `requirements`, `filesystem` (disk full, read-only) or `models`.", suffix="<id>:<what>"),
    Code("version_base_override", 422, "A requirement of the version would replace a package of the base environment (e.g. torch); list it in `python.allow_base_overrides` to allow that.", suffix="<id>:<package>"),
    Code("version_busy", 503, "Another installer of the same version held its lock longer than `VERSIONS_LOCK_TIMEOUT`.", suffix="<id>"),
    # Model store
    Code("invalid_model_type", 400, "The model `type` is not a ComfyUI model folder (`checkpoints`, `loras`, `vae`, ...).", suffix="<type>"),
    Code("invalid_filename", 400, "A model file name is 1 to 255 letters, digits and ` ._+()-`, starting with a letter or digit: no `/`, `\\`, `..` name, NUL or hidden name."),
    Code("unsupported_scheme", 400, "A model URL must be `http://`, `https://` or `gs://bucket/object`.", suffix="<scheme>"),
    Code("model_exists", 409, "`/download` would replace a different model file already at `<type>/<name>`; send `\"replace\": true` to replace it (the old file is moved to `.quarantine/`). A job's `models` entry never replaces one (a running job may be using it): give the file another name.", suffix="<type>/<name>"),
    Code("job_models_too_large", 413, "A job's `models` declare, or turn out to hold, more bytes than `JOB_MODELS_MAX_BYTES`; no partial file is kept."),
    Code("download_failed", 502, "A model download failed: the HTTP status that refused it (`404`, `403`, or `429`/`5xx` after retries), `timeout`, `unreachable`, `gcs`, `io` (the model folder cannot be written), or `worker_died` (the download killed its worker repeatedly).", suffix="<status|why>"),
    Code("size_mismatch", 502, "The source announced or delivered a size other than the expected one; nothing is at the final path."),
    Code("checksum_mismatch", 502, "The downloaded bytes do not have the expected sha256; the file is moved to `<models>/.quarantine/` and nothing is at the final path."),
    Code("insufficient_disk", 507, "Not enough free disk for the model; `detail` gives the bytes needed and free. Refused before any byte is written."),
    Code("model_missing", 424, "A model of the version is absent or wrong and was not (or could not be) downloaded.", suffix="<name>"),
    # Delivery
    Code("gcs_bucket_required", 400, "`output_mode=gcs` needs `GCS_BUCKET` or a per-job `gcs_bucket`."),
    Code("gcs_bucket_not_allowed", 403, "The bucket is not in `GCS_ALLOWED_BUCKETS`.", suffix="<bucket>"),
    Code("result_too_large", 422, "`output_mode=base64`: the outputs as base64 pass `BASE64_MAX_BYTES`; nothing is returned inline, the files are kept on the worker (`outputs` lists their `sha256` and `kept_path`). Use `auto` or a bucket."),
    Code("gcs_upload_failed", 502, "Uploading an output to GCS failed after retries; nothing partial is reported as done.", suffix="<why>"),
    Code("s3_bucket_required", 400, "`output_mode=s3` needs `S3_BUCKET` or a per-job `s3_bucket`."),
    Code("s3_bucket_not_allowed", 403, "The bucket is not in `S3_ALLOWED_BUCKETS`.", suffix="<bucket>"),
    Code("s3_upload_failed", 502, "Uploading an output to S3 failed: `unreachable`, `timeout`, the HTTP status after retries, `bucket_not_found`, `forbidden`, `credentials`, `exists` (the key holds other content), `checksum` (stored bytes differ; deleted) or `rejected`; nothing partial is reported as done.", suffix="<why>"),
)}


class AppError(Exception):
    """A failure with a catalogued code; `as_dict()` is what callers see."""

    def __init__(self, prefix: str, detail: str = "", *, suffix: str | None = None,
                 extra: dict[str, Any] | None = None, status: int | None = None):
        if prefix not in CATALOGUE:
            raise KeyError(f"error code {prefix!r} is not in services/errors.py's catalogue")
        self.entry = CATALOGUE[prefix]
        self.code = f"{prefix}:{suffix}" if suffix else prefix
        self.detail = detail
        self.extra = extra or {}
        self.status = status or self.entry.status
        super().__init__(self.one_line())

    @property
    def fatal(self) -> bool:
        return self.entry.fatal

    @property
    def prefix(self) -> str:
        return self.entry.prefix

    def as_dict(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}

    def one_line(self) -> str:
        # RunPod keeps only the `error` string of a failed job, so code and detail travel together.
        return f"{self.code}: {self.detail}" if self.detail else self.code


def markdown_table() -> str:
    rows = ["| Code | HTTP | Meaning |", "|---|---|---|"]
    for code in CATALOGUE.values():
        name = f"{code.prefix}:{code.suffix}" if code.suffix else code.prefix
        fatal = " Fatal: the serverless worker refuses later jobs and asks to be replaced." if code.fatal else ""
        rows.append(f"| `{name}` | {code.status} | {code.meaning}{fatal} |")
    return "\n".join(rows)
