"""`output_mode=gcs`: each output file uploaded to `gs://<bucket>/<prefix>/<job_id>/<filename>`.

Uploads are create-only (`if_generation_match=0`) with a crc32c checksum, so a retry can never
overwrite another object and a corrupted transfer is refused by GCS itself. Transient failures
(connection errors, 429, 5xx) are retried GCS_RETRIES times with exponential back-off from
GCS_RETRY_BASE_SLEEP; a 412 on a retry means an earlier attempt did land, which counts as done
when the stored object's crc32c matches ours. The result holds the `gs://` URL, plus a V4 signed
URL (GCS_SIGNED_URL_TTL > 0, needs a service-account key) and the public URL (GCS_PUBLIC=1).

google-cloud-storage is imported on first use: the Pod API and workers that never upload do not
pay for it. `STORAGE_EMULATOR_HOST` (read by the library itself) points it at an emulator.
"""
from __future__ import annotations

import asyncio
import base64
import threading
import time
from datetime import timedelta
from typing import Any

import google_crc32c

from services import logs
from services.errors import AppError

log = logs.get("outputs.gcs")

UPLOAD_TIMEOUT = (10, 120)  # connect, read (seconds) per attempt


def _crc32c_b64(data: bytes) -> str:
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


class GcsDelivery:
    def __init__(self, settings):
        self.settings = settings
        self._client = None
        self._validated: set[str] = set()
        self._lock = threading.Lock()

    def _storage(self):
        with self._lock:
            if self._client is None:
                from google.auth.credentials import AnonymousCredentials
                from google.cloud import storage

                project = self.settings.gcs_project or None
                emulator = self.settings.storage_emulator_host
                if emulator:
                    # Anonymous: an emulator checks no token, and a key file would make the client
                    # fetch one from Google first. The key still signs URLs (see _signing_credentials).
                    self._client = storage.Client(project=project or "emulator", credentials=AnonymousCredentials(),
                                                  client_options={"api_endpoint": emulator})
                else:
                    self._client = storage.Client(project=project)
            return self._client

    def _signing_credentials(self):
        """The service-account key of GOOGLE_APPLICATION_CREDENTIALS when there is one; otherwise
        the client's own credentials (which sign only when they hold a private key)."""
        path = self.settings.google_application_credentials
        if not path:
            return None
        from google.oauth2 import service_account
        try:
            return service_account.Credentials.from_service_account_file(path)
        except (OSError, ValueError) as exc:
            raise AppError("gcs_upload_failed", f"GOOGLE_APPLICATION_CREDENTIALS is not a service-account key "
                           f"({type(exc).__name__})", suffix="signing") from None

    async def deliver(self, job_id: str, name: str, data: bytes, content_type: str, request) -> dict[str, Any]:
        return await asyncio.to_thread(self._deliver, job_id, name, data, content_type, request)

    def _deliver(self, job_id: str, name: str, data: bytes, content_type: str, request) -> dict[str, Any]:
        from google.api_core import exceptions as gexc

        bucket_name = request.gcs_bucket
        object_name = "/".join(part for part in (request.gcs_prefix, job_id, name) if part)
        try:
            client = self._storage()
            bucket = client.bucket(bucket_name)
            if self.settings.gcs_validate and bucket_name not in self._validated:
                self._with_retries(lambda: bucket.reload(timeout=UPLOAD_TIMEOUT, retry=None), "validate")
                self._validated.add(bucket_name)
            blob = bucket.blob(object_name)
            self._upload(blob, data, content_type)
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
            # services/jobs/request.py applies stricter rules first (gcs_names.py): a backstop.
            raise AppError("gcs_upload_failed", f"google-cloud-storage refused it: {exc}"[:200],
                           suffix="rejected") from None
        result = {"gcs_url": f"gs://{bucket_name}/{object_name}"}
        if self.settings.gcs_public:
            result["public_url"] = blob.public_url
        if self.settings.gcs_signed_url_ttl > 0:
            try:
                result["signed_url"] = blob.generate_signed_url(
                    version="v4", method="GET", expiration=timedelta(seconds=self.settings.gcs_signed_url_ttl),
                    credentials=self._signing_credentials(), api_access_endpoint=self.settings.storage_emulator_host or None)
            except (AttributeError, ValueError, TypeError) as exc:
                raise AppError("gcs_upload_failed", "uploaded, but no signed URL: the credentials hold no "
                               f"private key ({type(exc).__name__})", suffix="signing",
                               extra={"gcs_url": result["gcs_url"]}) from None
        return result

    def _upload(self, blob, data: bytes, content_type: str) -> None:
        from google.api_core import exceptions as gexc

        def once() -> None:
            try:
                blob.upload_from_string(data, content_type=content_type, if_generation_match=0,
                                        checksum="crc32c", retry=None, timeout=UPLOAD_TIMEOUT)
            except gexc.PreconditionFailed:
                # The object exists: an earlier attempt landed (its answer was lost, or a worker
                # that died delivered this job before), or another writer's did. Only the same
                # bytes count as done.
                blob.reload(timeout=UPLOAD_TIMEOUT, retry=None)
                if blob.crc32c != _crc32c_b64(data):
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
