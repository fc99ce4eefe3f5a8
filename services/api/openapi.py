"""`GET /openapi.json`: the Pod API described in OpenAPI 3.1.

tests/test_api_openapi.py keeps it true: every route the app serves is documented with its
methods, and real answers validate against the schemas here (OpenAPI 3.1 schemas are JSON
Schema 2020-12).
"""
from __future__ import annotations

import json

from services import __version__
from services.model_types import ALL_TYPES
from services.outputs import registry
from services.store.states import DownloadState, JobState


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = _json(_ref("Error"), "Error: a stable code and a human detail")
BUSY = {**_json(_ref("Error"), "`queue_full` (QUEUE_MAX_JOBS jobs queued or running; nothing was stored), or "
                              "ComfyUI is unavailable"),
        "headers": {"Retry-After": {"description": "with `queue_full`: seconds to wait before sending it again",
                                    "schema": {"type": "integer"}}}}
# 421: a Host header this API does not serve (services/api/guard.py); 415: a body that is not JSON.
_ERRORS = {"400": ERROR, "401": ERROR, "404": ERROR, "413": ERROR, "421": ERROR}
_BODY_ERRORS = {**_ERRORS, "415": ERROR}
# The web pages (services/api/pages.py): public files, revalidated with their ETag.
_HTML = {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}
_NOT_MODIFIED = {"description": "Unchanged since the ETag sent in If-None-Match"}
_ASSET = {"200": {"description": "The file", "content": {"text/javascript": {"schema": {"type": "string"}},
                                                          "text/css": {"schema": {"type": "string"}}}},
          "304": _NOT_MODIFIED, "400": ERROR, "421": ERROR}
_FILE_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
# /healthz's view of a ComfyUI and of its latched GPU fault: the Pod's (top level) and each backend's.
_COMFY = {"type": "object", "required": ["state"],
          "properties": {"state": {"enum": ["ready", "starting", "down"]}, "url": {"type": "string"},
                         "reason": {"type": "string"}}}
_GPU_FAULT = {"type": ["object", "null"], "required": ["reason", "at"],
              "description": "a GPU fault latched until that ComfyUI restarts",
              "properties": {"reason": {"type": "string"}, "at": {"type": ["number", "null"]}}}

SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "string", "description": "stable code, see README's error reference"},
                       "detail": {"type": "string"},
                       "node_errors": {"type": "object", "description": "ComfyUI's own per-node validation errors"},
                       "job_id": {"type": "string"},
                       # An encrypted request's error: `error` is the bare code prefix, the rest is sealed.
                       "encrypted": {"const": True}, "nonce": {"type": "string"},
                       "ciphertext": {"type": "string", "description": "sealed {error, detail, ...} (open_reply)"}},
    },
    "Envelope": {
        "type": "object", "required": ["encrypted", "epk", "nonce", "ciphertext"],
        "properties": {"encrypted": {"const": True}, "epk": {"type": "string"}, "nonce": {"type": "string"},
                       "ciphertext": {"type": "string"}, "async": {"type": "boolean"}, "job_id": {"type": "string"}},
    },
    "SealedReply": {
        "type": "object", "required": ["encrypted", "nonce", "ciphertext"],
        "properties": {"encrypted": {"const": True}, "nonce": {"type": "string"}, "ciphertext": {"type": "string"}},
    },
    "RunRequest": {
        "type": "object",
        "properties": {
            "version_id": {"type": "string", "description": "versions/<id>.json; default DEFAULT_VERSION_ID"},
            "workflow": {"type": ["object", "string"], "description": "API-format prompt, or a workflow the editor saved (UI format, converted with the running version's node definitions), object or JSON string"},
            "workflow_url": {"type": "string", "format": "uri"},
            "webhook_url": {"type": "string", "format": "uri", "maxLength": 2048,
                            "description": "POSTed to, signed (Standard Webhooks), when the job ends"},
            "models_dir": {"type": "string"}, "verbose": {"type": "boolean"},
            "timeout": {"type": "number", "exclusiveMinimum": 0},
            "images": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, "image": {"type": "string", "description": "base64 or data URI"},
                               "url": {"type": "string"}}}},
            "async": {"type": "boolean", "description": "answer 202 {job_id} at once"},
            "params": {"type": "object", "description": "named parameters of the version's default workflow "
                       "(GET /versions/{version_id}); not with workflow or workflow_url",
                       "additionalProperties": {"type": ["string", "number", "boolean"]}},
            "overrides": {"type": "object", "description": "{node_id: {input: value}}: literal inputs the "
                          "workflow's nodes already have, replaced",
                          "additionalProperties": {"type": "object", "minProperties": 1,
                                                   "additionalProperties": {"type": ["string", "number", "boolean"]}}},
            "job_id": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]*(\\.[A-Za-z0-9_-]+)*$",
                       "description": "client-chosen id: a retry returns the same job"},
        },
    },
    "Version": {
        "type": "object", "required": ["id", "state"],
        "properties": {"id": {"type": "string"}, "description": {"type": "string"},
                       "state": {"enum": ["installed", "outdated", "available", "invalid_spec"]},
                       "installed": {"type": "boolean"}, "default_workflow": {"type": "boolean"},
                       "error": {"type": "string", "description": "with `invalid_spec`: the spec's error code"},
                       "parameters": {"type": "object", "additionalProperties": {
                           "type": "object", "required": ["type", "default", "node", "input"],
                           "properties": {"type": {"enum": ["int", "float", "string", "boolean", "enum"]},
                                          "default": {"type": ["string", "number", "boolean"]},
                                          "min": {"type": "number"}, "max": {"type": "number"},
                                          "choices": {"type": "array", "items": {"type": ["string", "number"]}},
                                          "node": {"type": "string"}, "input": {"type": "string"},
                                          "description": {"type": "string"}}}}},
    },
    "Output": {
        "type": "object", "required": ["node_id", "type"],
        "properties": {"node_id": {"type": "string"}, "filename": {"type": "string"},
                       "type": {"enum": ["image", "animated", "video", "audio", "3d", "file", "text"]},
                       "content_type": {"type": "string"}, "size": {"type": "integer"},
                       "sha256": {"type": "string"}, "text": {"type": "string"},
                       "omitted": {"const": "too_large_for_inline"}, "kept_path": {"type": "string"},
                       "detail": {"type": "string"},
                       "cached": {"type": "boolean", "description": "ComfyUI served it from its cache: nothing of it ran in this job"}},
    },
    "Provenance": {
        "type": "object", "description": "What produced the result (README: Jobs: payload and result)",
        "properties": {"version_id": {"type": "string"}, "runtime": {"enum": ["version", "comfy_home", "external"]},
                       "comfyui_commit": {"type": ["string", "null"]},
                       "custom_nodes": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
                       "models": {"type": "array", "items": {"type": "object", "properties": {
                           "name": {"type": "string"}, "type": {"type": "string"},
                           "sha256": {"type": ["string", "null"]}, "in_spec": {"type": "boolean"}}}},
                       "workflow_sha256": {"type": "string"},
                       "seeds": {"type": "object", "additionalProperties": {"type": "object"}}},
    },
    "RunResult": {
        "type": "object",
        "properties": {"job_id": {"type": "string"}, "prompt_id": {"type": "string"}, "version_id": {"type": "string"},
                       "outputs": {"type": "array", "items": _ref("Output")},
                       "size": {"type": "integer"},
                       "timings_ms": {"type": "object"}, "dry_run": {"type": "boolean"},
                       "cached_nodes": {"type": "array", "items": {"type": "string"}},
                       "provenance": _ref("Provenance")},
    },
    "Job": {
        "type": "object", "required": ["job_id", "state"],
        "properties": {"job_id": {"type": "string"},
                       "state": {"enum": [s.value for s in JobState]},
                       "progress": {"type": "number"}, "version_id": {"type": ["string", "null"]},
                       "prompt_id": {"type": ["string", "null"]}, "created_at": {"type": "number"},
                       "started_at": {"type": ["number", "null"]}, "finished_at": {"type": ["number", "null"]},
                       "attempts": {"type": "integer"}, "comfy_attempts": {"type": "integer"},
                       "result": {"oneOf": [_ref("RunResult"), _ref("SealedReply")]},
                       "error": {"type": "string"}, "detail": {"type": ["string", "null"]}},
    },
    "DownloadRequest": {
        "type": "object", "required": ["url", "type"],
        "properties": {"url": {"type": "string", "pattern": "^(https?|gs)://", "description": "http(s):// or gs://bucket/object"},
                       "type": {"enum": list(ALL_TYPES), "description": "ComfyUI model folder (unet, clip and "
                                "t2i_adapter are aliases of diffusion_models, text_encoders and controlnet)"},
                       "filename": {"type": "string", "maxLength": 255, "pattern": "^[A-Za-z0-9][A-Za-z0-9 ._+()-]*$",
                                    "description": "default: the URL's last path segment"},
                       "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                       "size": {"type": "integer", "minimum": 0},
                       "replace": {"type": "boolean", "default": False,
                                   "description": "replace a different file already at type/filename "
                                                  "(else 409 model_exists)"}},
    },
    "Download": {
        "type": "object", "required": ["download_id", "state"],
        "properties": {"download_id": {"type": "string"},
                       "state": {"enum": [s.value for s in DownloadState]},
                       "url": {"type": "string"}, "type": {"type": "string"}, "filename": {"type": "string"},
                       "sha256": {"type": ["string", "null"]}, "bytes_done": {"type": "integer"},
                       "bytes_total": {"type": ["integer", "null"]}, "path": {"type": ["string", "null"]},
                       "error": {"type": ["string", "null"]}, "detail": {"type": ["string", "null"]},
                       "attempts": {"type": "integer"}, "created_at": {"type": "number"},
                       "updated_at": {"type": "number"}, "replace": {"type": "boolean"}},
    },
    "Model": {
        "type": "object", "required": ["name", "size", "path"],
        "properties": {"name": {"type": "string"}, "size": {"type": "integer"},
                       "sha256": {"type": ["string", "null"], "description": "known once verified and unchanged"},
                       "path": {"type": "string"}},
    },
    "Health": {
        "type": "object", "required": ["ok", "server_public_key_b64"],
        "description": "Without the token (when API_TOKEN is set, or the API listens beyond loopback) "
                       "only `ok` and `server_public_key_b64`",
        "properties": {"ok": {"type": "boolean"}, "model_dir": {"type": "string"},
                       "server_public_key_b64": {"type": "string"},
                       "comfy": {**_COMFY, "description": "a serving backend's ComfyUI, else backend 0's"},
                       "gpu": {"type": "object", "properties": {"state": {"enum": ["ok", "degraded", "absent", "unknown"]}}},
                       "gpu_fault": {**_GPU_FAULT, "description": "a serving backend's latched GPU fault (so null), "
                                                                  "else backend 0's"},
                       "backends": {"type": "array", "description": "each ComfyUI backend (COMFY_GPUS: one per GPU); "
                                                                    "/healthz is 503 only when none can serve",
                                    "items": {"type": "object",
                                              "required": ["backend", "program", "gpu", "runtime", "ok", "gpu_state",
                                                           "gpu_reason", "gpu_fault", "comfy"],
                                              "properties": {
                                                  "backend": {"type": "integer"}, "program": {"type": "string"},
                                                  "gpu": {"type": ["string", "null"],
                                                          "description": "its CUDA_VISIBLE_DEVICES entry; null: not pinned"},
                                                  "runtime": {"type": ["string", "null"]},
                                                  "ok": {"type": "boolean", "description": "it can take a job: its ComfyUI "
                                                         "answers, no GPU fault is latched, its GPU is not degraded"},
                                                  "gpu_state": {"enum": ["ok", "degraded", "absent", "unknown", None]},
                                                  "gpu_reason": {"type": ["string", "null"]},
                                                  "gpu_fault": _GPU_FAULT, "comfy": _COMFY}}},
                       "programs": {"type": "object"}, "version": {"type": "object"},
                       "startup": {"type": "object", "description": "each program's start-up ledger (README: Start-up ledger)",
                                   "additionalProperties": {
                                       "type": "object", "required": ["pid", "created_at", "restored", "stages"],
                                       "properties": {"pid": {"type": "integer"}, "created_at": {"type": "number"},
                                                      "restored": {"type": "boolean"},
                                                      "stages": {"type": "array", "items": {
                                                          "type": "object", "required": ["stage", "seconds"],
                                                          "properties": {"stage": {"type": "string"},
                                                                         "seconds": {"type": "number"}}}}}}}},
    },
    "Ready": {
        "type": "object", "required": ["ready"],
        "description": "Without the token (when API_TOKEN is set, or the API listens beyond loopback) only `ready`",
        "properties": {"ready": {"type": "boolean"},
                       "reasons": {"type": "object", "additionalProperties": {"type": "string"},
                                   "description": "each failed check and why: `comfy_down`, `comfy_starting`, "
                                                  "`gpu_fault`, `gpu_degraded`, `queue_full`, `unchecked` (just started)"},
                       "queue": {"type": "object",
                                 "properties": {"active": {"type": ["integer", "null"], "description": "jobs queued or running"},
                                                "max": {"type": "integer", "description": "QUEUE_MAX_JOBS (0: no bound)"}}}},
    },
}

PATHS = {
    "/healthz": {"get": {
        "summary": "Health from a cached snapshot (no I/O per request); details only with the token",
        "responses": {"200": _json(_ref("Health"), "ComfyUI answers"),
                      "503": _json(_ref("Health"), "No ComfyUI backend can serve: each is down or starting "
                                                          "(`comfy.reason` says why), has a GPU fault latched (`gpu_fault`) "
                                                          "or its GPU is degraded (`backends[].gpu_reason`)"),
                      "400": ERROR, "421": ERROR}}},
    "/readyz": {"get": {
        "summary": "Whether to send this Pod new jobs, from a cached snapshot (no I/O per request); reasons only with the token",
        "responses": {"200": _json(_ref("Ready"), "Ready: /healthz is ok (ComfyUI runs its version, the GPU is sound) and the queue has room"),
                      "503": _json(_ref("Ready"), "Not ready; `reasons` says why"),
                      "400": ERROR, "421": ERROR}}},
    "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1"),
                                                                        "400": ERROR, "421": ERROR}}},
    "/": {"get": {"summary": "The status page (HTML): health, backends, GPU, programs, jobs, downloads; asks for the token "
                             "once (POST /session) and fetches everything with the session cookie",
                  "responses": {"200": _HTML, "304": _NOT_MODIFIED, "400": ERROR, "421": ERROR}}},
    "/status/{name}": {"get": {"summary": "The status page's script and style sheet",
                               "parameters": [_FILE_NAME], "responses": {**_ASSET, "404": ERROR}}},
    "/docs": {"get": {"summary": "This document in Swagger UI (HTML), served from the pinned swagger-ui-bundle-v2 package",
                      "responses": {"200": _HTML, "304": _NOT_MODIFIED, "400": ERROR, "421": ERROR}}},
    "/docs/{name}": {"get": {"summary": "Swagger UI's files", "parameters": [_FILE_NAME],
                             "responses": {**_ASSET, "404": ERROR}}},
    "/session": {
        "post": {"summary": "Log a browser in: the right API_TOKEN sets an HttpOnly, SameSite=Strict session cookie "
                            "(not the token; expires after API_SESSION_TTL) that every route accepts like the header",
                 "security": [{}],
                 "requestBody": {"required": True, "content": {"application/json": {"schema": {
                     "type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}}}},
                 "responses": {"200": _json({"type": "object", "required": ["session"],
                                             "properties": {"session": {"type": "boolean"},
                                                            "expires": {"type": "integer", "description": "unix seconds"},
                                                            "detail": {"type": "string"}}},
                                            "Logged in (`session: false`: API_TOKEN is not set, nothing to log in to)"),
                               **_BODY_ERRORS}},
        "delete": {"summary": "Log a browser out: the session cookie is deleted", "security": [{}],
                   "responses": {"200": _json({"type": "object", "required": ["session"],
                                               "properties": {"session": {"const": False}}}, "Logged out"),
                                 "400": ERROR, "421": ERROR}}},
    "/metrics": {"get": {
        "summary": "Prometheus metrics (text format), read at scrape time from the shared store and snapshots: "
                   "every API worker answers the same; open without the token only with METRICS_PUBLIC=1",
        "responses": {"200": {"description": "Prometheus text exposition format (see README's metrics table)",
                              "content": {"text/plain": {"schema": {"type": "string"}}}},
                      **_ERRORS}}},
    "/run": {"post": {
        "summary": "Run a workflow: waits for the result, or answers 202 at once with `async: true`",
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        "description": "names the job like `job_id`; repeated with another body: 409 idempotency_conflict"}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"oneOf": [_ref("RunRequest"), _ref("Envelope")]}}}},
        "responses": {"200": _json({"oneOf": [_ref("RunResult"), _ref("SealedReply")]}, "The result (sealed when the request was)"),
                      "202": _json({"type": "object", "required": ["job_id"],
                                    "properties": {"job_id": {"type": "string"}, "state": {"type": "string"}}},
                                   "Accepted; poll /jobs/{job_id}"),
                      **_BODY_ERRORS, "403": ERROR, "409": ERROR, "422": ERROR, "502": ERROR, "503": BUSY, "504": ERROR, "507": ERROR}}},
    "/jobs": {"get": {
        "summary": "Recent jobs and counts by state",
        "parameters": [{"name": "state", "in": "query", "schema": {"type": "string"}},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
        "responses": {"200": _json({"type": "object", "required": ["jobs", "counts"],
                                    "properties": {"jobs": {"type": "array", "items": _ref("Job")},
                                                   "counts": {"type": "object"}}}, "Jobs"), **_ERRORS}}},
    "/jobs/{job_id}": {
        "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "get": {"summary": "State, progress, result or error of a job",
                "responses": {"200": _json(_ref("Job"), "The job"), **_ERRORS}},
        "delete": {"summary": "Cancel a job (interrupts ComfyUI when it runs)",
                   "responses": {"200": _json(_ref("Job"), "Already finished"),
                                 "202": _json(_ref("Job"), "Cancel requested"), **_ERRORS}}},
    "/jobs/{job_id}/events": {
        "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "get": {"summary": "The job as server-sent events: `state` on each change, `progress` "
                           "({percent, node, step, steps}) while it runs, `done` (the job, as GET /jobs/{id}) last",
                "responses": {"200": {"description": "An event stream that ends after `done`",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              **_ERRORS}}},
    "/download": {"post": {
        "summary": "Queue a model download for the modelsync program (a running one for the same file is joined)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("DownloadRequest")}}},
        "responses": {"202": _json({"type": "object", "required": ["download_id", "state"],
                                    "properties": {"download_id": {"type": "string"}, "state": {"type": "string"}}},
                                   "Queued; poll /downloads/{download_id}"), **_BODY_ERRORS}}},
    "/downloads": {"get": {
        "summary": "Recent downloads",
        "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
        "responses": {"200": _json({"type": "object", "required": ["downloads"],
                                    "properties": {"downloads": {"type": "array", "items": _ref("Download")}}},
                                   "Downloads"), **_ERRORS}}},
    "/downloads/{download_id}": {
        "parameters": [{"name": "download_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "get": {"summary": "State and bytes done/total of a download",
                "responses": {"200": _json(_ref("Download"), "The download"), **_ERRORS}}},
    "/versions": {"get": {
        "summary": "The versions this appliance has specs for: description, parameters, install state",
        "responses": {"200": _json({"type": "object", "required": ["versions"],
                                    "properties": {"versions": {"type": "array", "items": _ref("Version")}}},
                                   "Versions"), **_ERRORS}}},
    "/versions/{version_id}": {
        "parameters": [{"name": "version_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "get": {"summary": "One version: description, named parameters (type, default, bounds, choices) and "
                           "whether it is installed",
                "responses": {"200": _json(_ref("Version"), "The version"), **_ERRORS, "500": ERROR}}},
    "/models/ls": {"get": {
        "summary": "Every model ComfyUI can load, by type, with size and sha256 where known",
        "parameters": [{"name": "type", "in": "query", "schema": {"enum": list(ALL_TYPES)}}],
        "responses": {"200": _json({"type": "object", "required": ["models"],
                                    "properties": {"models": {"type": "object", "additionalProperties": {
                                        "type": "array", "items": _ref("Model")}}}}, "Models"), **_ERRORS}}},
}


# Documented only where it is served (COMFY_UI_PROXY=1, services/api/comfy_proxy.py).
COMFY_UI_PATHS = {"/comfy/{path}": {
    "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
                    "description": "ComfyUI's own route, e.g. `` (the UI), `api/object_info`, `prompt`, `upload/image`, `ws`"}],
    "get": {"summary": "ComfyUI's own web UI and API, proxied to ComfyUI on loopback (every method, streamed bodies; "
                       "`/comfy/ws?clientId=` is its websocket). Not JSON-only: instead a request from another site's "
                       "page (Origin, Sec-Fetch-Site) is refused",
            "responses": {"default": {"description": "ComfyUI's answer, passed through"},
                          "401": ERROR, "403": ERROR, "421": ERROR, "503": ERROR}}}}


def _with_destinations(schemas: dict) -> dict:
    """RunRequest, Output and RunResult gain the fields of the output destinations
    (services/outputs/registry.py), read when the document is built."""
    strings = {f: {"type": "string"} for f in registry.result_fields()}
    run = schemas["RunRequest"]
    return {**schemas,
            "RunRequest": {**run, "properties": {**run["properties"], "output_mode": {"enum": list(registry.output_modes())},
                                                 **registry.payload_schema()}},
            **{name: {**schemas[name], "properties": {**schemas[name]["properties"], **strings}}
               for name in ("Output", "RunResult")}}


def document(paths: dict | None = None, schemas: dict | None = None) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "ComfyUI appliance Pod API", "version": __version__},
        "components": {"schemas": _with_destinations({**SCHEMAS, **(schemas or {})}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "Only when API_TOKEN is set"}}},
        "security": [{}, {"bearer": []}],
        "paths": {**PATHS, **(paths or {})},
    }


class OpenApiResource:
    def __init__(self, paths: dict | None = None, schemas: dict | None = None):
        self.body = json.dumps(document(paths, schemas)).encode()

    async def on_get(self, req, resp) -> None:
        resp.content_type = "application/json"
        resp.data = self.body
