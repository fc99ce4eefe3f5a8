"""The transports behind model sources: http(s) through requests, gs:// through
google-cloud-storage. Loaded on the first download only (services/models/sources.open_source)."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Mapping
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions

from services.errors import AppError
from services.models.sources import (CONNECT_TIMEOUT, CONTENT_RANGE, RangeNotSatisfiable, Transient, public_url,
                                     token_for)
from services.net.pinned import pinned_session
from services.net.policy import MAX_REDIRECTS, FetchPolicy
from services.net.target import Target


class HttpBody:
    def __init__(self, response: requests.Response, start: int, total: int | None, ranged: bool):
        self._response = response
        self.start, self.total, self.ranged = start, total, ranged

    def read(self, size: int) -> bytes:
        """What one receive gives, up to `size` bytes: nothing that arrived is held back, so
        after a failure a resume starts exactly where the data ended."""
        try:
            return self._response.raw.read1(size)
        except urllib3.exceptions.ReadTimeoutError:
            raise Transient("timeout") from None
        except (urllib3.exceptions.HTTPError, OSError):
            raise Transient("unreachable") from None

    def close(self) -> None:
        raw = self._response.raw
        if raw.length_remaining == 0:
            # The whole body was read: keep the connection for the next piece (on https a new
            # one costs a TLS handshake per piece). requests' close() would drop it.
            raw.release_conn()
        else:
            self._response.close()


class HttpSource:
    """An http(s) URL under the fetch policy (services/net): every hop is parsed once into a
    Target, which decides the token and is what the request is built from, and connections go
    to the addresses the policy checked. A refused hop raises AppError `url_forbidden:<why>`."""

    def __init__(self, url: str, tokens: Mapping[str, str], read_timeout: float, policy: FetchPolicy):
        self.url = url
        self.public = public_url(url)
        self._tokens = dict(tokens)
        self._timeout = (CONNECT_TIMEOUT, read_timeout)
        self._policy = policy
        self._origin = policy.target(url)  # refuses a forbidden URL before anything is opened
        self._local = threading.local()  # a Session per thread: segments run on several
        # Where the redirects led last time: the pieces of a segmented download skip the hops.
        self._resolved: Target | None = None

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = pinned_session(self._policy)
        return session

    def open(self, start: int, end: int | None = None) -> HttpBody:
        headers = {"Accept-Encoding": "identity",
                   "Range": f"bytes={start}-{'' if end is None else end - 1}"}
        target = self._resolved or self._origin
        for _ in range(MAX_REDIRECTS + 1):
            hop = dict(headers)
            token = token_for(target, self._tokens)
            if token:
                hop["Authorization"] = f"Bearer {token}"
            try:
                response = self._session().get(target.url, headers=hop, stream=True, allow_redirects=False,
                                               timeout=self._timeout)
            except requests.Timeout:
                raise Transient("timeout") from None
            except requests.RequestException:
                raise Transient("unreachable") from None
            if not response.is_redirect:
                break
            response.close()
            location = urljoin(target.url, response.headers["location"])
            scheme = urlsplit(location).scheme
            if scheme not in ("http", "https"):
                raise AppError("unsupported_scheme", f"{self.public} redirects to a non-http URL",
                               suffix=scheme[:16] or "none")
            target = self._policy.target(location)
        else:
            raise AppError("download_failed", f"{self.public} redirects more than {MAX_REDIRECTS} times",
                           suffix="redirects")
        return self._body(response, target, start)

    def _body(self, response: requests.Response, target: Target, start: int) -> HttpBody:
        status = response.status_code
        if status in (200, 206):
            self._resolved = target if target != self._origin else None
        else:
            response.close()
        if status == 206:
            match = CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
            if not match or int(match[1]) != start:
                response.close()
                raise AppError("download_failed", f"{self.public} answered a range other than the one asked",
                               suffix="bad_range")
            return HttpBody(response, start, None if match[3] == "*" else int(match[3]), True)
        if status == 200:
            length = response.headers.get("content-length")
            return HttpBody(response, 0, int(length) if length and length.isdigit() else None, False)
        if status == 416 and start > 0:
            raise RangeNotSatisfiable()
        if status == 429 or status >= 500:
            raise Transient(str(status), _retry_after(response.headers.get("retry-after")))
        if self._resolved and status in (401, 403, 404, 410):
            # A signed CDN URL may have expired: go through the original URL again.
            self._resolved = None
            raise Transient(str(status))
        raise AppError("download_failed", f"{self.public} answered HTTP {status}", suffix=str(status))


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: rare for these servers, the back-off applies instead


class GcsBody:
    def __init__(self, reader, start: int, end: int, total: int, public: str):
        self._reader = reader
        self._public = public
        self._left = end - start
        self.start, self.total, self.ranged = start, total, True

    def read(self, size: int) -> bytes:
        with _gcs_errors(self._public):
            data = self._reader.read(min(size, self._left))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._reader.close()


class GcsSource:
    """`gs://bucket/object` through google-cloud-storage, with `GOOGLE_APPLICATION_CREDENTIALS`
    or the default credentials (public buckets work without any)."""

    def __init__(self, url: str, settings, chunk_bytes: int):
        parts = urlsplit(url)
        self.url = url
        self.public = public_url(url)
        self._bucket, self._name = parts.hostname, parts.path.lstrip("/")
        self._settings = settings
        self._chunk = chunk_bytes
        self._blob = None

    def _client(self):
        from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
        from google.cloud import storage  # imported here: slow, and only gs:// needs it

        settings = self._settings
        project = settings.gcs_project or None
        try:
            if settings.google_application_credentials:
                return storage.Client.from_service_account_json(settings.google_application_credentials,
                                                                project=project)
            try:
                return storage.Client(project=project)
            except DefaultCredentialsError:
                return storage.Client.create_anonymous_client()
        except (OSError, ValueError, GoogleAuthError):
            raise AppError("download_failed", "the Google Cloud credentials cannot be used", suffix="gcs") from None

    def open(self, start: int, end: int | None = None) -> GcsBody:
        if self._blob is None:
            client = self._client()
            with _gcs_errors(self.public):
                self._blob = client.bucket(self._bucket).get_blob(self._name)
            if self._blob is None:
                raise AppError("download_failed", f"{self.public} does not exist", suffix="404")
        blob = self._blob
        end = blob.size if end is None else min(end, blob.size)
        # The generation pins every piece to the same object: a replaced object fails with 412
        # instead of splicing two files. raw_download: the stored bytes, never GCS's gunzip.
        reader = blob.open("rb", chunk_size=self._chunk, retry=None, raw_download=True,
                           if_generation_match=blob.generation,
                           timeout=(CONNECT_TIMEOUT, self._settings.download_timeout))
        with _gcs_errors(self.public):
            reader.seek(start)
        return GcsBody(reader, start, end, blob.size, self.public)


@contextmanager
def _gcs_errors(public: str) -> Iterator[None]:
    """google-cloud-storage's exceptions -> Transient or AppError, as for http."""
    from google.api_core import exceptions as gexc

    try:
        yield
    except gexc.GoogleAPICallError as exc:
        code = int(exc.code or 0)
        if code == 429 or code >= 500:
            raise Transient(str(code)) from None
        raise AppError("download_failed", f"{public} answered HTTP {code}", suffix=str(code)) from None
    except (requests.Timeout, urllib3.exceptions.ReadTimeoutError):
        raise Transient("timeout") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
        raise Transient("unreachable") from None


