"""`output_mode=s3`: each output file uploaded to `s3://<bucket>/<prefix>/<job_id>/<filename>` on
AWS S3 or an S3-compatible store (S3_ENDPOINT_URL: Cloudflare R2, MinIO, GCS interoperability).

Create-only: every PutObject and CompleteMultipartUpload carries `If-None-Match: *` (boto3's
transfer manager does not pass that argument through, so a botocore hook on our own client adds
it), and the key is looked up first, which also covers stores that ignore the header, except
for a writer that slips in between the lookup and the upload on such a store (keys without
s3:ListBucket get 403 for a missing key: then only the header guards). Checksums: a
single PUT carries the CRC32 botocore computes over the bytes it sends; a multipart upload (from
S3_MULTIPART_THRESHOLD) carries the whole file's CRC32 (FULL_OBJECT), which S3 checks the parts
add up to. Either way the stored object's CRC32 is then compared with the spooled file's own.

Transient failures (connection errors, timeouts, 429/throttling, 5xx) are retried S3_RETRIES
times with exponential back-off from S3_RETRY_BASE_SLEEP; botocore's own retries are off so
there is one owner. Each attempt starts by looking the key up: an earlier attempt whose answer
was lost (or a worker that died after delivering) left the object, which counts as done when
its checksum matches ours. A failed multipart upload is aborted by the transfer manager; one
that cannot be aborted (the store went away) is left to the bucket's
AbortIncompleteMultipartUpload lifecycle rule and never becomes an object.

Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/
AWS_SESSION_TOKEN, AWS_PROFILE, instance roles). boto3 is imported on first use: processes
that never upload do not pay for it.
"""
from __future__ import annotations

import asyncio
import base64
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from services import logs
from services.errors import AppError
from services.outputs import s3_names
from services.outputs.destination import check_allowed, optional_str

log = logs.get("outputs.s3")

CONNECT_TIMEOUT, READ_TIMEOUT = 10, 120  # seconds, per request
PART_SIZE = 8 * 2**20        # multipart chunks: boto3's default; it grows them past 10,000 parts
MAX_CONCURRENCY = 10         # parts in flight per upload (boto3's default)
READ_CHUNK = 2**20
# Error codes S3 (and R2, MinIO) answer for overload, a request that took too long, bytes that
# arrived damaged (BadDigest: the checksum refused them), or (409) a conditional write that raced
# another one on the same key: worth another attempt.
TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests",
                             "RequestTimeout", "InternalError", "ServiceUnavailable", "BadDigest",
                             "ConditionalRequestConflict"})


@dataclass(frozen=True)
class S3Target:
    bucket: str
    prefix: str


def _crc32_b64(path: Path) -> str:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def _header_safe(value: str) -> str:
    # User metadata travels as HTTP headers: only printable ASCII survives every store.
    return value if value.isascii() and value.isprintable() else urllib.parse.quote(value, safe="")


def _create_only(params: dict, **_: Any) -> None:
    params.setdefault("IfNoneMatch", "*")


def _response(exc: Exception) -> dict:
    # A ClientError's parsed answer; botocore's connection errors carry `response=None`.
    return getattr(exc, "response", None) or {}


def _status(exc: Exception) -> int:
    return int(_response(exc).get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(exc: Exception) -> str:
    return str(_response(exc).get("Error", {}).get("Code", ""))


class S3Destination:
    name = "s3"
    doc = ("Upload to an S3-compatible bucket (AWS S3, R2, MinIO); each output gets `s3_url` "
           "(`s3://bucket/key`) and, with `S3_SIGNED_URL_TTL`, a presigned `signed_url`.")
    payload_fields = ("s3_bucket", "s3_prefix")
    secret_fields: tuple[str, ...] = ()
    result_fields = ("s3_url", "signed_url")
    settings = ("S3_BUCKET", "S3_ALLOWED_BUCKETS", "S3_PREFIX", "S3_ENDPOINT_URL", "S3_REGION",
                "S3_SIGNED_URL_TTL", "S3_MULTIPART_THRESHOLD", "S3_RETRIES", "S3_RETRY_BASE_SLEEP")

    def __init__(self, settings):
        self.settings = settings
        self._client = None
        self._lock = threading.Lock()

    def target(self, payload: dict, settings) -> S3Target:
        bucket = optional_str(payload, "s3_bucket")
        if bucket is not None and (problem := s3_names.bucket_problem(bucket)):
            raise AppError("invalid_payload", problem, suffix="s3_bucket")
        bucket = bucket or settings.s3_bucket
        if not bucket:
            raise AppError("s3_bucket_required", "output_mode s3 needs s3_bucket or S3_BUCKET")
        check_allowed(bucket, settings.s3_allowed_buckets, "s3_bucket_not_allowed", "S3_ALLOWED_BUCKETS")
        prefix = (optional_str(payload, "s3_prefix") or settings.s3_prefix).strip("/")
        if problem := s3_names.prefix_problem(prefix):
            raise AppError("invalid_payload", problem, suffix="s3_prefix")
        return S3Target(bucket, prefix)

    def configured(self, settings) -> bool:
        return bool(settings.s3_bucket)

    def _s3(self):
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                endpoint = self.settings.s3_endpoint_url or None
                config = Config(
                    connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                    retries={"total_max_attempts": 1, "mode": "standard"},  # _with_retries owns retrying
                    max_pool_connections=MAX_CONCURRENCY, signature_version="s3v4",
                    # Path-style: MinIO and other self-hosted stores have no per-bucket host names.
                    s3={"addressing_style": "path"} if endpoint else None)
                client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config,
                                                        region_name=self.settings.s3_region or None)
                for operation in ("PutObject", "CompleteMultipartUpload"):
                    client.meta.events.register(f"before-parameter-build.s3.{operation}", _create_only)
                self._client = client
            return self._client

    async def deliver(self, target: S3Target, job_id: str, name: str, path: Path, size: int, sha256: str,
                      content_type: str, metadata: dict[str, str]) -> dict[str, Any]:
        return await asyncio.to_thread(self._deliver, target, job_id, name, path, size, sha256, content_type,
                                       metadata)

    def _deliver(self, target: S3Target, job_id: str, name: str, path: Path, size: int, sha256: str,
                 content_type: str, metadata: dict[str, str]) -> dict[str, Any]:
        from botocore.exceptions import (ClientError, NoCredentialsError, ParamValidationError,
                                         PartialCredentialsError, ProfileNotFound)

        key = "/".join(part for part in (target.prefix, job_id, name) if part)
        crc = _crc32_b64(path)
        meta = {k: _header_safe(v) for k, v in {**metadata, "sha256": sha256}.items()}
        try:
            client = self._s3()
            self._with_retries(lambda: self._upload(client, target.bucket, key, path, size, crc, content_type, meta))
            result = {"s3_url": f"s3://{target.bucket}/{key}"}
            if self.settings.s3_signed_url_ttl > 0:
                result["signed_url"] = client.generate_presigned_url(
                    "get_object", Params={"Bucket": target.bucket, "Key": key},
                    ExpiresIn=self.settings.s3_signed_url_ttl)
            return result
        except ClientError as exc:
            if _code(exc) == "NoSuchBucket":
                raise AppError("s3_upload_failed", f"bucket {target.bucket} does not exist or is not visible",
                               suffix="bucket_not_found") from None
            if _status(exc) == 403:
                raise AppError("s3_upload_failed", f"the credentials may not write to bucket {target.bucket} "
                               f"({_code(exc)})", suffix="forbidden") from None
            raise AppError("s3_upload_failed", f"S3 answered HTTP {_status(exc)} {_code(exc)}"[:200],
                           suffix=str(_status(exc) or "error")) from None
        except (NoCredentialsError, PartialCredentialsError, ProfileNotFound) as exc:
            raise AppError("s3_upload_failed", f"no usable AWS credentials ({type(exc).__name__}): set "
                           "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role",
                           suffix="credentials") from None
        except ParamValidationError as exc:
            # botocore's own checks; target() applies stricter rules first (s3_names.py): a backstop.
            raise AppError("s3_upload_failed", f"botocore refused it: {exc}"[:200], suffix="rejected") from None

    def _upload(self, client, bucket: str, key: str, path: Path, size: int, crc: str, content_type: str,
                meta: dict[str, str]) -> None:
        from boto3.s3.transfer import TransferConfig, create_transfer_manager
        from botocore.exceptions import ClientError

        stored = self._head(client, bucket, key)
        created = False
        if not stored:  # absent, or not ours to see: the conditional upload still never overwrites
            threshold = self.settings.s3_multipart_threshold
            # Multipart: the whole file's CRC32, which S3 checks the parts add up to; a single PUT
            # carries the CRC32 botocore computes while sending (ChecksumCRC32 there is not checked
            # against the body by every store).
            checksum = {"ChecksumCRC32": crc} if size >= threshold else {"ChecksumAlgorithm": "CRC32"}
            config = TransferConfig(multipart_threshold=threshold, multipart_chunksize=PART_SIZE,
                                    max_concurrency=MAX_CONCURRENCY)
            try:
                # The transfer manager itself: client.upload_file would turn a ClientError into a
                # bare S3UploadFailedError (no status: a 412 would look like any failure). By name,
                # not as an open file: each part is then read in its own thread straight from disk
                # (a file object is read part by part under one lock, markedly slower).
                with create_transfer_manager(client, config) as manager:
                    manager.upload(str(path), bucket, key, extra_args={
                        "ContentType": content_type, "Metadata": meta, **checksum}).result()
                created = True
            except ClientError as exc:
                if _status(exc) != 412:
                    raise
                # Created since the look-up: by another writer, or by our earlier attempt whose
                # answer was lost. Which one, the stored checksum tells.
            stored = self._head(client, bucket, key)
        if stored and self._same(stored, size, crc, meta["sha256"]):
            return
        if created and stored == {}:
            return  # we may not read it back; S3 checked the CRC32 on the way in
        if created:
            self._discard(client, bucket, key)
            raise AppError("s3_upload_failed", f"{key} was stored with another checksum than the file's; "
                           "it was deleted", suffix="checksum")
        raise AppError("s3_upload_failed", f"{key} already exists with other content" + (
            " (or with content these credentials may not read to compare)" if stored == {} else ""),
            suffix="exists")

    @staticmethod
    def _head(client, bucket: str, key: str) -> dict | None:
        """The stored object's headers; None when there is none; {} when the credentials may not
        look (S3 answers 403 for a missing key without s3:ListBucket, which upload keys often lack)."""
        from botocore.exceptions import ClientError

        try:
            return client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if _status(exc) in (403, 404):
                return {} if _status(exc) == 403 else None
            raise

    @staticmethod
    def _same(stored: dict, size: int, crc: str, sha256: str) -> bool:
        """Whether the stored object is our file: by its whole-object CRC32 where the store keeps
        one, else (stores that keep no checksums) by size and the sha256 we put in its metadata."""
        if stored.get("ChecksumCRC32") and stored.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
            return stored["ChecksumCRC32"] == crc and stored.get("ContentLength") == size
        return stored.get("ContentLength") == size and stored.get("Metadata", {}).get("sha256") == sha256

    @staticmethod
    def _discard(client, bucket: str, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            client.delete_object(Bucket=bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            log.error("s3_discard_failed", bucket=bucket, key=key, error=type(exc).__name__)

    def _with_retries(self, action: Callable[[], None]) -> None:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

        attempts = max(1, self.settings.s3_retries)
        for attempt in range(1, attempts + 1):
            try:
                return action()
            except (ConnectionError, HTTPClientError, ClientError) as exc:
                status = _status(exc)
                if isinstance(exc, ClientError) and not (status >= 500 or status == 429 or _code(exc) in TRANSIENT_CODES):
                    raise
                if attempt == attempts:
                    reason = str(status) if status else ("timeout" if "Timeout" in type(exc).__name__ else "unreachable")
                    raise AppError("s3_upload_failed", f"upload failed {attempts} times: {type(exc).__name__}",
                                   suffix=reason) from None
                sleep = self.settings.s3_retry_base_sleep * 2 ** (attempt - 1)
                log.warning("s3_retry", attempt=attempt, error=type(exc).__name__, status=status, sleep=sleep)
                time.sleep(sleep)
