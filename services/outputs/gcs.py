from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import google_crc32c

from services import logs
from services.errors import AppError
from services.outputs import gcs_names
from services.outputs.destination import check_allowed, optional_str

log = logs.get("outputs.gcs")

UPLOAD_TIMEOUT = (10, 120)  # connect, read (seconds) per attempt
_CHUNK = 2**20


def _crc32c_b64(path: Path) -> str:
    checksum = google_crc32c.Checksum()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            checksum.update(chunk)
    return base64.b64encode(checksum.digest()).decode()


@dataclass(frozen=True)
class GcsTarget:
    bucket: str
    prefix: str
    credentials: dict | None = field(default=None, repr=False)  # the job's own key: never shown


def _bad(field_name: str, detail: str) -> AppError:
    return AppError("invalid_payload", detail, suffix=field_name)


def _credentials(payload: dict) -> dict | None:
    """`gcs_credentials`: a service-account key, as the JSON object Google hands out (or its text)."""
    value = payload.get("gcs_credentials")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, dict):
        raise _bad("gcs_credentials", "gcs_credentials must be a service-account key (a JSON object)")
    from google.oauth2 import service_account
    try:
        service_account.Credentials.from_service_account_info(value)
    except (ValueError, KeyError, TypeError):
        # The library's message may quote the key: only the kind of problem is told.
        raise _bad("gcs_credentials", "gcs_credentials is not a usable service-account key") from None
    return value


class GcsDestination:
    name = "gcs"
    doc = "Uploads each file to `gs://<bucket>/<prefix>/<job_id>/<file>`; returns `gcs_url` (+ `signed_url`, `public_url`)."
    payload_fields = ("gcs_bucket", "gcs_prefix", "gcs_credentials")
    secret_fields = ("gcs_credentials",)
    result_fields = ("gcs_url", "signed_url", "public_url")
    settings = ("GCS_BUCKET", "GCS_ALLOWED_BUCKETS", "GCS_PREFIX", "GCS_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS",
                "GCS_SIGNED_URL_TTL", "GCS_PUBLIC", "GCS_RETRIES", "GCS_RETRY_BASE_SLEEP", "GCS_VALIDATE",
                "STORAGE_EMULATOR_HOST")

    def __init__(self, settings):
        self.settings = settings
        self._client = None
        self._validated: set[str] = set()
        self._lock = threading.Lock()

    # ---- the job's target ----------------------------------------------------------
    def configured(self, settings) -> bool:
        return bool(settings.gcs_bucket)

    def target(self, payload: dict, settings) -> GcsTarget:
        bucket = optional_str(payload, "gcs_bucket")
        if bucket is not None:
            problem = gcs_names.bucket_problem(bucket)
            if problem:
                raise _bad("gcs_bucket", problem)
        prefix = (optional_str(payload, "gcs_prefix") or settings.gcs_prefix).strip("/")
        problem = gcs_names.prefix_problem(prefix)
        if problem:
            raise _bad("gcs_prefix", problem)
        bucket = bucket or settings.gcs_bucket
        if not bucket:
            raise AppError("gcs_bucket_required", "output_mode gcs needs gcs_bucket or GCS_BUCKET")
        check_allowed(bucket, settings.gcs_allowed_buckets, "gcs_bucket_not_allowed", "GCS_ALLOWED_BUCKETS")
        return GcsTarget(bucket, prefix, _credentials(payload))

    # ---- clients and keys ----------------------------------------------------------
    def _storage(self, target: GcsTarget):
        if target.credentials is not None:
            return self._new_client(self._key_credentials(target))
        with self._lock:
            if self._client is None:
                self._client = self._new_client(None)
            return self._client

    def _new_client(self, credentials):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        project = self.settings.gcs_project or None
        emulator = self.settings.storage_emulator_host
        if emulator:
            # Anonymous: an emulator checks no token, and a key would make the client fetch one
            # from Google first. The key still signs URLs (see _signing_credentials).
            return storage.Client(project=project or "emulator", credentials=AnonymousCredentials(),
                                  client_options={"api_endpoint": emulator})
        if credentials is not None:
            return storage.Client(project=project or credentials.project_id, credentials=credentials)
        return storage.Client(project=project)

    @staticmethod
    def _key_credentials(target: GcsTarget):
        from google.oauth2 import service_account
        return service_account.Credentials.from_service_account_info(target.credentials)

    def _signing_credentials(self, target: GcsTarget):
        """The job's own key, else the service-account key of GOOGLE_APPLICATION_CREDENTIALS when
        there is one; otherwise the client's own credentials (which sign only when they hold a key)."""
        if target.credentials is not None:
            return self._key_credentials(target)
        path = self.settings.google_application_credentials
        if not path:
            return None
        from google.oauth2 import service_account
        try:
            return service_account.Credentials.from_service_account_file(path)
        except (OSError, ValueError) as exc:
            raise AppError("gcs_upload_failed", f"GOOGLE_APPLICATION_CREDENTIALS is not a service-account key "
                           f"({type(exc).__name__})", suffix="signing") from None

    # ---- delivery ------------------------------------------------------------------
    async def deliver(self, target: GcsTarget, job_id: str, name: str, path: Path, size: int, sha256: str,
                      content_type: str, metadata: dict[str, str]) -> dict[str, Any]:
        return await asyncio.to_thread(self._deliver, target, job_id, name, path, content_type, metadata)

    def _deliver(self, target: GcsTarget, job_id: str, name: str, path: Path, content_type: str,
                 metadata: dict[str, str]) -> dict[str, Any]:
        from google.api_core import exceptions as gexc

        bucket_name = target.bucket
        object_name = "/".join(part for part in (target.prefix, job_id, name) if part)
        try:
            client = self._storage(target)
            bucket = client.bucket(bucket_name)
            if self.settings.gcs_validate and bucket_name not in self._validated:
                self._with_retries(lambda: bucket.reload(timeout=UPLOAD_TIMEOUT, retry=None), "validate")
                if target.credentials is None:  # another job's key may see other buckets
                    self._validated.add(bucket_name)
            blob = bucket.blob(object_name)
            blob.metadata = metadata or None
            self._upload(blob, path, content_type)
        except gexc.NotFound:
            raise AppError("gcs_upload_failed", f"bucket {bucket_name} does not exist or is not visible",
                           suffix="bucket_not_found") from None
        except gexc.Forbidden:
            raise AppError("gcs_upload_failed", f"the credentials may not write to bucket {bucket_name}",
                           suffix="forbidden") from None
        except gexc.GoogleAPICallError as exc:
            raise AppError("gcs_upload_failed", f"GCS answered HTTP {exc.code}", suffix=str(exc.code)) from None
        except ValueError as exc:
            # The library's own checks (bucket and object names) raise a bare ValueError.
            # target() applies stricter rules first (gcs_names.py): a backstop.
            raise AppError("gcs_upload_failed", f"google-cloud-storage refused it: {exc}"[:200],
                           suffix="rejected") from None
        result = {"gcs_url": f"gs://{bucket_name}/{object_name}"}
        if self.settings.gcs_public:
            result["public_url"] = blob.public_url
        if self.settings.gcs_signed_url_ttl > 0:
            try:
                result["signed_url"] = blob.generate_signed_url(
                    version="v4", method="GET", expiration=timedelta(seconds=self.settings.gcs_signed_url_ttl),
                    credentials=self._signing_credentials(target),
                    api_access_endpoint=self.settings.storage_emulator_host or None)
            except (AttributeError, ValueError, TypeError) as exc:
                raise AppError("gcs_upload_failed", "uploaded, but no signed URL: the credentials hold no "
                               f"private key ({type(exc).__name__})", suffix="signing",
                               extra={"gcs_url": result["gcs_url"]}) from None
        return result

    def _upload(self, blob, path: Path, content_type: str) -> None:
        from google.api_core import exceptions as gexc

        def once() -> None:
            try:
                blob.upload_from_filename(str(path), content_type=content_type, if_generation_match=0,
                                          checksum="crc32c", retry=None, timeout=UPLOAD_TIMEOUT)
            except gexc.PreconditionFailed:
                # The object exists: an earlier attempt landed (its answer was lost, or a worker
                # that died delivered this job before), or another writer's did. Only the same
                # bytes count as done.
                blob.reload(timeout=UPLOAD_TIMEOUT, retry=None)
                if blob.crc32c != _crc32c_b64(path):
                    raise AppError("gcs_upload_failed", f"{blob.name} already exists with other content",
                                   suffix="exists") from None

        self._with_retries(once, "upload")

    def _with_retries(self, action, what: str) -> None:
        import requests
        from google.api_core import exceptions as gexc

        transient = (gexc.TooManyRequests, gexc.InternalServerError, gexc.BadGateway, gexc.ServiceUnavailable,
                     gexc.GatewayTimeout, requests.ConnectionError, requests.Timeout, ConnectionError)
        attempts = max(1, self.settings.gcs_retries)
        for attempt in range(1, attempts + 1):
            try:
                return action()
            except transient as exc:
                if attempt == attempts:
                    reason = "unreachable" if isinstance(exc, (requests.ConnectionError, ConnectionError)) else (
                        "timeout" if isinstance(exc, requests.Timeout) else str(getattr(exc, "code", "5xx")))
                    raise AppError("gcs_upload_failed", f"{what} failed {attempts} times: {type(exc).__name__}",
                                   suffix=reason) from None
                sleep = self.settings.gcs_retry_base_sleep * 2 ** (attempt - 1)
                log.warning("gcs_retry", what=what, attempt=attempt, error=type(exc).__name__, sleep=sleep)
                time.sleep(sleep)
