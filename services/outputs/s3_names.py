"""S3 bucket and key-prefix names, checked by AWS's published rules before any call.

botocore checks only the bucket's character set (a ParamValidationError), and S3, R2 and MinIO
answer 400 to the rest; checking here turns a bad name into `invalid_payload:s3_bucket` /
`invalid_payload:s3_prefix` before the job runs, and into a `config error` for S3_BUCKET and
S3_ALLOWED_BUCKETS. Pure functions: services/config.py uses them too. Rules (general purpose
buckets): https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html and
https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html
"""
from __future__ import annotations

import ipaddress
import re

from services.outputs import names

_BUCKET_CHARS = re.compile(r"[a-z0-9][a-z0-9.-]*[a-z0-9]")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# Control characters, and those AWS lists as "to avoid" in keys because URLs, presigned links
# and many tools mangle them.
_PREFIX_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\{}^%`\[\]\"<>~#|]")


def bucket_problem(name: str) -> str | None:
    """Why `name` is not a valid bucket name, or None when it is."""
    if not 3 <= len(name) <= 63:
        return "a bucket name is 3 to 63 characters"
    if not _BUCKET_CHARS.fullmatch(name):
        return "a bucket name is lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
    if ".." in name:
        return "a bucket name may not have two dots in a row"
    try:
        ipaddress.IPv4Address(name)
        return "a bucket name may not be an IP address"
    except ValueError:
        pass
    if name.startswith(_RESERVED_PREFIXES) or name.endswith(_RESERVED_SUFFIXES):
        return "a bucket name may not use AWS's reserved prefixes (xn--, sthree-) or suffixes (-s3alias, --ol-s3)"
    return None


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` (slashes already stripped at both ends) cannot start object keys, or None."""
    return names.prefix_problem(prefix, "s3_prefix", _PREFIX_FORBIDDEN,
                                "\\ { } ^ % ` [ ] \" < > ~ # |", empty_parts=False)
