"""Standard Webhooks signatures (https://www.standardwebhooks.com), shared by every sender.

A message carries three headers: `webhook-id` (the same for every attempt of one message, so a
receiver can drop duplicates), `webhook-timestamp` (unix seconds of this attempt) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. The secret is
`whsec_<base64>` (the prefix is optional), as the reference libraries take it, so a receiver
hands the very same string to its own library (`standardwebhooks`, `svix`, ...).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PREFIX = "whsec_"
# The specification's bounds for the decoded key: shorter is guessable, longer buys nothing.
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64
_HOW = ("expected whsec_<base64> of 24 to 64 random bytes (Standard Webhooks), e.g. python -c \"import base64, "
        "os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\"")


def key_bytes(secret: str) -> bytes:
    """The HMAC key a secret stands for; ValueError when it is not a usable Standard Webhooks secret."""
    text = secret.strip()
    if text.startswith(PREFIX):
        text = text[len(PREFIX):]
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(_HOW) from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(_HOW)
    return key


def parse_secret(raw: str) -> str:
    """WEBHOOK_SECRET for the settings registry: refused at start-up when unusable, kept as given."""
    key_bytes(raw)
    return raw.strip()


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(key, msg_id, timestamp, body)}
