"""Worker key pairs for the encrypted envelope (Curve25519, PyNaCl), as the environment lines
the deployment guide uses: `WORKER_PRIVATE_KEY_B64` goes to the worker (a RunPod secret),
`SERVER_PUBLIC_KEY_B64` to every client; a Pod also publishes the public key on `/healthz`."""
from __future__ import annotations

import base64
import binascii

from nacl.public import PrivateKey

from client.errors import ClientError


def generate() -> tuple[str, str]:
    """A new key pair: (private, public), both base64."""
    key = PrivateKey.generate()
    return base64.b64encode(bytes(key)).decode(), base64.b64encode(bytes(key.public_key)).decode()


def public_of(private_b64: str) -> str:
    try:
        raw = base64.b64decode(private_b64.strip(), validate=True)
        return base64.b64encode(bytes(PrivateKey(raw).public_key)).decode()
    except (binascii.Error, ValueError, TypeError):
        raise ClientError("invalid_key", "not a base64 32-byte Curve25519 private key") from None


def check_public(public_b64: str) -> str:
    """A usable SERVER_PUBLIC_KEY_B64, or a ClientError saying what is wrong with it."""
    try:
        raw = base64.b64decode(public_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ClientError("invalid_key", "SERVER_PUBLIC_KEY_B64 is not base64") from None
    if len(raw) != 32:
        raise ClientError("invalid_key", f"SERVER_PUBLIC_KEY_B64 is {len(raw)} bytes, a Curve25519 key is 32")
    return public_b64.strip()
