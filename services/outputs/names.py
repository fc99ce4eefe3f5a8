"""The object-prefix rules every bucket destination shares (each adds its provider's own)."""
from __future__ import annotations

import re

MAX_PREFIX_BYTES = 512  # an object name/key is at most 1024 bytes; leave room for <job_id>/<file>


def prefix_problem(prefix: str, field: str, forbidden: re.Pattern, shown: str, *,
                   empty_parts: bool) -> str | None:
    """Why `prefix` (slashes stripped at both ends) cannot start object names, or None.
    `forbidden` matches the characters the provider refuses or mangles (`shown` lists them);
    `empty_parts`: whether `a//b` is allowed."""
    try:
        encoded = prefix.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") is valid JSON, not valid UTF-8
        return f"{field} is not valid Unicode text"
    if len(encoded) > MAX_PREFIX_BYTES:
        return f"{field} is at most {MAX_PREFIX_BYTES} bytes"
    if forbidden.search(prefix):
        return f"{field} may not hold control characters or any of {shown}"
    bad_parts = (".", "..") if empty_parts else ("", ".", "..")
    if prefix and any(part in bad_parts for part in prefix.split("/")):
        # "." and ".." parts (and "a//b" where refused): URL normalisation would point a link at another object.
        return f"{field} may not have {'' if empty_parts else 'empty, '}'.' or '..' parts"
    return None
