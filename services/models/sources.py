"""Where model bytes come from: http(s) URLs and `gs://bucket/object`, opened at any offset.

Every http(s) URL, and every redirect hop, goes through the fetch policy (services/net): parsed
once into a `Target`, refused when it carries userinfo or reaches a non-public address, and
connected to at the address that was checked.

Tokens: `HF_TOKEN` goes only to huggingface.co, hf.co and their subdomains (the CDN hosts Hugging
Face redirects to), `CIVITAI_TOKEN` only to civitai.com and its subdomains, and only over https.
The decision is made on the hop's `Target`, the same parsed host the request is built from and
connected to, so no URL spelling can make the two disagree. Redirects are followed by hand, one
hop at a time, so that decision is made again for every host: a redirect from huggingface.co to
any other host carries no token. requests' `trust_env` is off, so no netrc credential or proxy
from the environment joins in either. URLs are logged and reported through `public_url` only:
signed CDN URLs carry their credentials in the query.

`open(start, end)` answers a `Body` whose `start` is the offset its first byte has: `start` when
the server honoured Range, 0 when it ignored it (the caller then skips what it already has).
Failures worth retrying (dropped or silent connections, 429, 5xx) raise `Transient`; the others
raise `AppError`.
"""
from __future__ import annotations

import re
from typing import Mapping, Protocol
from urllib.parse import urlsplit

from services.errors import AppError
from services.net.policy import FetchPolicy
from services.net.target import Target, parse_target, public_url  # noqa: F401 - public_url: the store's display form

SCHEMES = ("http", "https", "gs")
TOKEN_HOSTS = {"hf_token": ("huggingface.co", "hf.co"), "civitai_token": ("civitai.com",)}
CONNECT_TIMEOUT = 15.0
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Transient(Exception):
    """A failure worth retrying after a pause."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason  # an HTTP status, `timeout` or `unreachable`
        self.retry_after = retry_after


class RangeNotSatisfiable(Exception):
    """416 for a resumed request: the partial is not a prefix of this file; start again."""


class Body(Protocol):
    start: int
    total: int | None  # the whole file's size, when the source says
    ranged: bool       # whether the source honours byte ranges

    def read(self, size: int) -> bytes: ...

    def close(self) -> None: ...


def check_url(url: object, policy: FetchPolicy | None = None) -> str:
    """The URL, or AppError. An http(s) URL must parse as a Target (no userinfo, an unambiguous
    host); with a policy, what it can refuse without a lookup is refused now (an address literal,
    a metadata name), so `/download` answers at once instead of failing later."""
    if not isinstance(url, str) or not url:
        raise AppError("invalid_payload", "url must be a non-empty string", suffix="url")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed `[`
        raise AppError("invalid_payload", "url cannot be parsed", suffix="url") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise AppError("unsupported_scheme", "model URLs are http://, https:// or gs://bucket/object",
                       suffix=scheme[:16] or "none")
    if not parts.hostname or (scheme == "gs" and not parts.path.strip("/")):
        raise AppError("unsupported_scheme", "the URL names no host (or no object)", suffix=scheme)
    if scheme != "gs":
        if policy is not None:
            policy.target(url)
        else:
            parse_target(url)
    return url


def host_tokens(settings) -> dict[str, str]:
    """Host suffix -> token, for the tokens that are set."""
    return {host: getattr(settings, attr) for attr, hosts in TOKEN_HOSTS.items()
            for host in hosts if getattr(settings, attr)}


def token_for(target: Target, tokens: Mapping[str, str]) -> str | None:
    """The token for this hop: its host is a token host or a subdomain of one, over https."""
    if target.scheme != "https":
        return None  # a token over plain http is readable by anyone on the path
    for suffix, token in tokens.items():
        if target.host == suffix or target.host.endswith("." + suffix):
            return token
    return None


def open_source(url: str, settings):
    """An HttpSource or GcsSource (services/models/transport.py). The transports load only here:
    requests and its TLS stack cost an idle modelsync or API worker about 16 MB resident."""
    from services.models.transport import GcsSource, HttpSource

    url = check_url(url)
    if urlsplit(url).scheme.lower() == "gs":
        return GcsSource(url, settings, settings.download_piece_bytes)
    return HttpSource(url, host_tokens(settings), settings.download_timeout, FetchPolicy.from_settings(settings))
