"""GCS bucket and object-prefix names, checked by Google's published rules before any call.

google-cloud-storage checks only part of them and raises a bare ValueError (a 500 when it
escaped); GCS itself answers 400 to the rest. Checking here turns a bad name into
`invalid_payload:gcs_bucket` / `invalid_payload:gcs_prefix` before the job runs, and into a
`config error` for GCS_BUCKET and GCS_ALLOWED_BUCKETS. Pure functions: services/config.py
uses them too. Rules: https://cloud.google.com/storage/docs/buckets#naming and
https://cloud.google.com/storage/docs/objects#naming
"""
from __future__ import annotations

import ipaddress
import re

from services.outputs import names

_BUCKET_CHARS = re.compile(r"[a-z0-9][a-z0-9._-]*[a-z0-9]")
# "google" and the close misspellings Google names (g00gle, goog1e, ...) are reserved.
_GOOGLE_LIKE = re.compile(r"g[o0]{2}g[l1]e")
_PREFIX_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f#?\[\]*]")  # control chars; wildcard/URL characters


def bucket_problem(name: str) -> str | None:
    """Why `name` is not a valid bucket name, or None when it is."""
    if not 3 <= len(name) <= 222:
        return "a bucket name is 3 to 63 characters (222 with dots)"
    if not _BUCKET_CHARS.fullmatch(name):
        return "a bucket name is lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
    if any(not 1 <= len(part) <= 63 for part in name.split(".")):
        return "each dot-separated part of a bucket name is 1 to 63 characters"
    try:
        ipaddress.IPv4Address(name)
        return "a bucket name may not be an IP address"
    except ValueError:
        pass
    if name.startswith("goog") or _GOOGLE_LIKE.search(name):
        return "a bucket name may not start with 'goog' or contain 'google'"
    return None


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` (slashes already stripped at both ends) cannot start object names, or None."""
    if problem := names.prefix_problem(prefix, "gcs_prefix", _PREFIX_FORBIDDEN, "# ? [ ] *", empty_parts=True):
        return problem
    if prefix.startswith(".well-known/acme-challenge"):
        return "gcs_prefix may not start with .well-known/acme-challenge"
    return None
