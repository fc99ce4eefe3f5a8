"""The one entrance for payloads: plaintext or a PyNaCl (Curve25519) envelope.

Envelope: `{"encrypted": true, "epk": b64(client ephemeral public key), "nonce": b64(24 bytes),
"ciphertext": b64(Box(client_sk, server_pk).encrypt(json))}`. The reply to an encrypted
request is sealed with the same Box and a fresh nonce, so only the sender can read results.
Every malformed envelope maps to one of three codes; the reason never includes key material.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.utils import random as random_bytes

from services.errors import AppError

ENVELOPE_FIELDS = ("epk", "nonce", "ciphertext")


@lru_cache(maxsize=4)
def _private_key(key_b64: str) -> PrivateKey:
    try:
        raw = base64.b64decode(key_b64, validate=True)
        return PrivateKey(raw)
    except (binascii.Error, ValueError, TypeError):
        raise AppError("encryption_unavailable", "WORKER_PRIVATE_KEY_B64 is not a base64 32-byte key") from None


def public_key_b64(settings) -> str:
    """The key clients encrypt to (`server_public_key_b64` in /healthz); empty when unset."""
    if not settings.worker_private_key_b64:
        return ""
    try:
        return base64.b64encode(bytes(_private_key(settings.worker_private_key_b64).public_key)).decode()
    except AppError:
        return ""


def _seal(box: Box, value: Any) -> dict[str, Any]:
    nonce = random_bytes(Box.NONCE_SIZE)
    sealed = box.encrypt(json.dumps(value).encode(), nonce)
    return {"encrypted": True, "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(sealed.ciphertext).decode()}


@dataclass(frozen=True)
class Sealer:
    box: Box

    def seal(self, value: Any) -> dict[str, Any]:
        return _seal(self.box, value)


@dataclass(frozen=True)
class OpenedPayload:
    payload: Any
    sealer: Sealer | None  # set when the request was encrypted: seal the reply with it

    def reply(self, value: Any) -> Any:
        return self.sealer.seal(value) if self.sealer else value


def is_envelope(body: Any) -> bool:
    return isinstance(body, dict) and (body.get("encrypted") is True or any(f in body for f in ENVELOPE_FIELDS))


def _b64(body: dict, field: str) -> bytes:
    value = body[field]
    if not isinstance(value, str):
        raise AppError("decryption_failed", f"{field} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AppError("decryption_failed", f"{field} is not valid base64") from None


def open_payload(body: Any, settings) -> OpenedPayload:
    if not is_envelope(body):
        if settings.encryption_required:
            raise AppError("encryption_required", "this worker only accepts encrypted payloads "
                           "{encrypted, epk, nonce, ciphertext}")
        return OpenedPayload(body, None)
    missing = [f for f in ENVELOPE_FIELDS if not body.get(f)]
    if missing:
        raise AppError("missing encrypted fields", "the envelope lacks " + ", ".join(missing))
    if not settings.worker_private_key_b64:
        raise AppError("encryption_unavailable", "no WORKER_PRIVATE_KEY_B64 is configured on this worker")
    epk, nonce, ciphertext = (_b64(body, f) for f in ENVELOPE_FIELDS)
    if len(epk) != PublicKey.SIZE:
        raise AppError("decryption_failed", f"epk must be {PublicKey.SIZE} bytes")
    if len(nonce) != Box.NONCE_SIZE:
        raise AppError("decryption_failed", f"nonce must be {Box.NONCE_SIZE} bytes")
    box = Box(_private_key(settings.worker_private_key_b64), PublicKey(epk))
    try:
        plaintext = box.decrypt(ciphertext, nonce)
    except (CryptoError, ValueError, TypeError):
        raise AppError("decryption_failed", "the envelope does not open with this worker's key") from None
    try:
        payload = json.loads(plaintext)
    except ValueError:
        raise AppError("decryption_failed", "the decrypted payload is not JSON") from None
    return OpenedPayload(payload, Sealer(box))


def seal_request(payload: Any, server_public_key_b64: str) -> tuple[dict[str, Any], Box]:
    """Client side: encrypt a payload for a worker; keep the Box to open its reply."""
    ephemeral = PrivateKey.generate()
    box = Box(ephemeral, PublicKey(base64.b64decode(server_public_key_b64)))
    envelope = _seal(box, payload)
    envelope["epk"] = base64.b64encode(bytes(ephemeral.public_key)).decode()
    return envelope, box


def open_reply(reply: dict[str, Any], box: Box) -> Any:
    """Client side: read a sealed reply."""
    return json.loads(box.decrypt(base64.b64decode(reply["ciphertext"]), base64.b64decode(reply["nonce"])))
