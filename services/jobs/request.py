"""A job's payload, checked and typed before anything runs.

The payload is the seeds' (`version_id`, `workflow` | `workflow_url`, `output_mode`,
`models_dir`, `verbose`) plus `images` (input files uploaded to ComfyUI before the run),
`timeout`, `models` (files the job brings into the model cache: services/jobs/job_models.py),
`params` and `overrides` (changes to the workflow: services/jobs/parameters.py),
`webhook_url` (Pod mode: where the job's end is POSTed; where it may point is the
Pod's fetch policy, services/api/webhooks.py) and the fields of the output destinations
(services/outputs/registry.py: `gcs_bucket`, `gcs_prefix`, ...), which the chosen destination
checks itself. Every mistake is an `AppError` naming the field, raised before ComfyUI sees
anything; no input may end as a 5xx later (too deep, NaN, a 400-digit number, a name with a
trailing newline, a bucket name the GCS library refuses). Names are matched as whole strings
(`fullmatch`: `$` also matches before a final newline).

Storage credentials in a payload (a destination's `secret_fields`) are accepted only from an
encrypted payload, or where ALLOW_PLAINTEXT_CREDENTIALS=1: the Pod stores a payload as it
arrived, and only an envelope keeps them sealed there.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field as dataclass_field
from typing import Any
from urllib.parse import urlsplit

from services import jsonlimits
from services.errors import AppError
from services.jobs.job_models import JobModel, parse_models
from services.jobs.parameters import parse_overrides, parse_params
from services.outputs import registry
from services.versions.spec import check_version_id

_IMAGE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,199}")
MAX_WEBHOOK_URL = 2048


@dataclass(frozen=True)
class InputImage:
    name: str
    data_b64: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class JobRequest:
    version_id: str
    workflow: Any            # decoded JSON (a string workflow is decoded here), None when
                             # workflow_url or the spec's default is used
    workflow_url: str | None
    output_mode: str         # a destination's name or "auto"
    destination: str | None  # the bucket destination files go to ("auto": those that do not fit inline)
    target: object           # its validated per-job target (may hold credentials: never logged)
    models_dir: str | None
    verbose: bool
    images: tuple[InputImage, ...]
    timeout: float
    webhook_url: str | None = None
    models: tuple[JobModel, ...] = ()  # fetched into the model cache before the job runs (job_models.py)
    params: dict[str, Any] = dataclass_field(default_factory=dict)  # named parameters of the version's default workflow
    overrides: dict[str, dict[str, Any]] = dataclass_field(default_factory=dict)  # {node_id: {input: literal}}


def _bad(field: str, detail: str) -> AppError:
    return AppError("invalid_payload", detail, suffix=field)


def _optional_str(payload: dict, field: str) -> str | None:
    value = payload.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(field, f"{field} must be a string")
    return value


def _bool(payload: dict, field: str) -> bool:
    value = payload.get(field, False)
    if isinstance(value, bool):
        return value
    if value in (0, 1, "0", "1", "true", "false"):
        return value in (1, "1", "true")
    raise _bad(field, f"{field} must be true or false")


def is_http_url(value: str) -> bool:
    """An http(s) URL that parses (urlsplit raises on `http://[::1`, port on `:x`): what
    aiohttp can be handed without a ValueError. Where it may point is the fetcher's policy."""
    if not value.isprintable() or " " in value:
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _timeout(payload: dict, settings) -> float:
    value = payload.get("timeout", settings.job_timeout)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad("timeout", "timeout must be a positive number of seconds")
    try:
        seconds = float(value)
    except OverflowError:  # a 400-digit integer
        raise _bad("timeout", "timeout is far too large") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise _bad("timeout", "timeout must be a positive number of seconds")
    # A job may ask for less time than the worker allows, never more.
    return min(seconds, settings.job_timeout)


def _webhook_url(payload: dict) -> str | None:
    url = _optional_str(payload, "webhook_url")
    if url is not None and len(url) > MAX_WEBHOOK_URL:
        raise _bad("webhook_url", f"webhook_url is longer than {MAX_WEBHOOK_URL} characters")
    return url


def _workflow(payload: dict) -> Any:
    workflow = payload.get("workflow")
    if isinstance(workflow, str):
        # Decoded here, under the same depth and number limits as the payload itself.
        try:
            return jsonlimits.loads(workflow, "workflow")
        except ValueError as exc:
            raise AppError("invalid_workflow", f"workflow string is not JSON: {exc}"[:300], suffix="not_json") from None
    if workflow is not None and not isinstance(workflow, dict):
        raise AppError("invalid_workflow", "workflow must be a JSON object or a JSON string", suffix="not_object")
    return workflow


def _output(payload: dict, settings, encrypted: bool) -> tuple[str, str | None, object]:
    """The output mode, the bucket destination it uses (None: inline only) and its target."""
    output_mode = payload.get("output_mode") or settings.output_mode
    modes = registry.output_modes()
    if output_mode not in modes:
        raise AppError("invalid_output_mode", f"output_mode must be one of {', '.join(modes)}")
    if not (encrypted or settings.allow_plaintext_credentials):
        for field in registry.secret_fields():
            if payload.get(field) not in (None, ""):
                raise AppError("credentials_need_encryption", f"{field} is accepted only inside an encrypted "
                               "payload (a plaintext payload is stored as it arrived)", suffix=field)
    if output_mode == registry.INLINE:
        return output_mode, None, None
    if output_mode == registry.AUTO:
        # The destination the job names fields of, else the first one with a default bucket.
        candidates = registry.bucket_destinations()
        named = [cls for cls in candidates if any(payload.get(f) not in (None, "") for f in cls.payload_fields)]
        chosen = (named or [cls for cls in candidates if cls(settings).configured(settings)] or [None])[0]
    else:
        chosen = registry.by_name()[output_mode]
    if chosen is None:
        return output_mode, None, None
    return output_mode, chosen.name, chosen(settings).target(payload, settings)


def parse_images(value: Any) -> tuple[InputImage, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _bad("images", "images must be a list of {name, image} or {name, url}")
    images, names = [], set()
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise AppError("invalid_input_image", f"images[{index}] needs a string name", suffix=str(index))
        name = item["name"]
        if not _IMAGE_NAME_RE.fullmatch(name) or ".." in name:
            raise AppError("invalid_input_image", "a name is a plain file name: letters, digits, "
                           "spaces and ._()+- (no '/', no '..')", suffix=str(index))
        if name in names:
            raise AppError("invalid_input_image", f"two images are named {name!r}", suffix=name)
        names.add(name)
        data, url = item.get("image"), item.get("url")
        if (data is None) == (url is None) or not isinstance(data if url is None else url, str):
            raise AppError("invalid_input_image", "give exactly one of image (base64) or url", suffix=name)
        if url is not None and not is_http_url(url):
            raise AppError("invalid_input_image", "url must be an http:// or https:// URL", suffix=name)
        images.append(InputImage(name, data, url))
    return tuple(images)


def parse_request(payload: Any, settings, encrypted: bool = False) -> JobRequest:
    if not isinstance(payload, dict):
        raise _bad("input", "the payload must be a JSON object")
    jsonlimits.check(payload)  # the Pod API checked its body already; RunPod's input arrives unchecked
    version_id = payload.get("version_id")
    if version_id in (None, ""):
        if not settings.default_version_id:
            raise AppError("missing_version_id", "name the version to run with version_id "
                           "(or set DEFAULT_VERSION_ID)")
        version_id = settings.default_version_id
    version_id = check_version_id(version_id)

    workflow_url = _optional_str(payload, "workflow_url")
    if payload.get("workflow") is not None and workflow_url is not None:
        raise AppError("workflow_conflict", "send either workflow or workflow_url, not both")
    if workflow_url is not None and not is_http_url(workflow_url):
        raise AppError("workflow_url_invalid", "workflow_url must be an http:// or https:// URL")
    workflow = _workflow(payload)
    params = parse_params(payload.get("params"))
    if params and (workflow is not None or workflow_url is not None):
        # Declared over the version's default workflow: in another, the same node id may be another node.
        raise AppError("params_conflict", "params set the version's default workflow; with your own "
                       "workflow or workflow_url, use overrides")

    output_mode, destination, target = _output(payload, settings, encrypted)
    timeout = _timeout(payload, settings)

    models_dir = _optional_str(payload, "models_dir")
    if models_dir is not None:
        # ComfyUI's model folders are fixed when it starts (extra_model_paths), so a job can only
        # name one this worker already reads; silently using another folder would be worse.
        known = {str(settings.models_dir), str(settings.comfy_cache_root / "models")}
        if models_dir.rstrip("/") not in known:
            raise _bad("models_dir", f"this worker reads models from {' and '.join(sorted(known))}; "
                       "set MODELS_DIR (or COMFYUI_MODEL_DIR) to use another folder")

    return JobRequest(
        version_id=version_id,
        workflow=workflow,
        workflow_url=workflow_url,
        output_mode=output_mode,
        destination=destination,
        target=target,
        models_dir=models_dir,
        verbose=_bool(payload, "verbose"),
        images=parse_images(payload.get("images")),
        timeout=timeout,
        webhook_url=_webhook_url(payload),
        models=parse_models(payload.get("models"), settings),
        params=params,
        overrides=parse_overrides(payload.get("overrides")),
    )
