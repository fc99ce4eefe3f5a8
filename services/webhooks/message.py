"""What a job's webhook says: `{"type": "job.<state>", "timestamp", "data": <GET /jobs/{id}>}`.

The Standard Webhooks payload shape. `data` is the job's public view as stored, so an encrypted
job's result (or sealed error) stays sealed, exactly as GET /jobs/{id} shows it. A view larger
than WEBHOOK_MAX_BYTES (base64 outputs can be tens of MB) is sent without its `result`, with
`result_omitted: true` and `href`, the path of GET /jobs/{id}, to fetch it from. The body is the
same on every attempt (the time is when the job ended), so retries are byte-identical.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

from services.store.jobs import Job


def _body(job: Job, data: dict) -> bytes:
    ended = datetime.fromtimestamp(job.finished_at or job.created_at, tz=timezone.utc)
    message = {"type": f"job.{job.state}", "timestamp": ended.isoformat().replace("+00:00", "Z"), "data": data}
    return json.dumps(message, separators=(",", ":")).encode()


def build(job: Job, max_bytes: int) -> bytes:
    view = job.public()
    body = _body(job, view)
    if len(body) <= max_bytes or "result" not in view:
        return body
    reference = {k: v for k, v in view.items() if k != "result"}
    return _body(job, {**reference, "result_omitted": True, "href": f"/jobs/{job.id}"})
