"""The one entrance for payloads: plaintext or a PyNaCl (Curve25519) envelope.

Envelope: `{"encrypted": true, "epk": b64(client ephemeral public key), "nonce": b64(24 bytes),
"ciphertext": b64(Box(client_sk, server_pk).encrypt(json))}`. Everything the worker answers to
an encrypted request is sealed with the same Box and a fresh nonce, so only the sender can read
it: results, and errors too, where only the code's prefix stays readable (callers and RunPod
branch on it). Every malformed envelope maps to one of a few codes; the reason never includes
key material. Replays are refused where envelopes are accepted (services/security/replay.py).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.utils import random as random_bytes

from services import jsonlimits
from services.errors import AppError

ENVELOPE_FIELDS = ("epk", "nonce", "ciphertext")

# Curve25519 points of small order (libsodium's blocklist). The shared key a Box derives from one
# is the same whatever our private key is, so an envelope built on it proves nothing; libsodium
# refuses them with an error PyNaCl raises as a bare RuntimeError (a 500 before this check).
# X25519 ignores the top bit, so each point is also refused with bit 255 set (LOW_ORDER_POINTS).
_SMALL_ORDER = frozenset(bytes.fromhex(h) for h in (
    "0000000000000000000000000000000000000000000000000000000000000000",  # 0
    "0100000000000000000000000000000000000000000000000000000000000000",  # 1
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  # order 8
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",  # order 8
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p - 1
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p (= 0)
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p + 1 (= 1)
))
LOW_ORDER_POINTS = tuple(sorted(_SMALL_ORDER)) + tuple(sorted(p[:31] + bytes([p[31] | 0x80]) for p in _SMALL_ORDER))


def is_low_order(epk: bytes) -> bool:
    return epk[:31] + bytes([epk[31] & 0x7F]) in _SMALL_ORDER


def _canonical(epk: bytes) -> bytes:
    """The point X25519 really uses: it ignores bit 255 and wraps values >= p, so every such
    spelling of an epk opens the same envelope and must count as the same envelope."""
    u = (int.from_bytes(epk, "little") & ((1 << 255) - 1)) % (2**255 - 19)
    return u.to_bytes(32, "little")


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
    sealer: Sealer | None  # set when the request was encrypted: seal every answer with it
    replay_key: str | None = None  # sha256(canonical epk + nonce): what "the same envelope" means
    sent_at: float | None = None  # the sealed payload's `ts`, taken out of the payload

    @property
    def encrypted(self) -> bool:
        return self.sealer is not None

    def reply(self, value: Any) -> Any:
        return self.sealer.seal(value) if self.sealer else value

    def error(self, exc: AppError) -> dict[str, Any]:
        """A failure as the caller sees it. Encrypted: `{"error": <prefix>, sealed rest}`; the
        suffix is sealed too, since it can name a version, an image or a node of the payload."""
        if self.sealer is None:
            return exc.as_dict()
        return {"error": exc.prefix, **self.sealer.seal(exc.as_dict())}


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


def _box(settings, epk: bytes) -> Box:
    if len(epk) != PublicKey.SIZE:
        raise AppError("decryption_failed", f"epk must be {PublicKey.SIZE} bytes")
    if is_low_order(epk):
        raise AppError("decryption_failed", "epk is not a usable public key (all-zero or low-order point)")
    try:
        return Box(_private_key(settings.worker_private_key_b64), PublicKey(epk))
    except CryptoError:  # libsodium refuses a shared key that comes out all-zero
        raise AppError("decryption_failed", "epk is not a usable public key") from None


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
    if len(nonce) != Box.NONCE_SIZE:
        raise AppError("decryption_failed", f"nonce must be {Box.NONCE_SIZE} bytes")
    box = _box(settings, epk)
    try:
        plaintext = box.decrypt(ciphertext, nonce)
    except (CryptoError, ValueError, TypeError):
        raise AppError("decryption_failed", "the envelope does not open with this worker's key") from None
    try:
        payload = jsonlimits.loads(plaintext)
    except ValueError:
        raise AppError("decryption_failed", "the decrypted payload is not JSON") from None
    sent_at = payload.pop("ts", None) if isinstance(payload, dict) else None
    return OpenedPayload(payload, Sealer(box), hashlib.sha256(_canonical(epk) + nonce).hexdigest(), sent_at)


def seal_request(payload: Any, server_public_key_b64: str, *, ts: float | None = None) -> tuple[dict[str, Any], Box]:
    """Client side: encrypt a payload for a worker; keep the Box to open its reply.

    A dict payload gets `ts` (now, or the given unix time) for workers that set ENVELOPE_MAX_AGE;
    the worker takes it out before the job sees the payload.
    """
    ephemeral = PrivateKey.generate()
    box = Box(ephemeral, PublicKey(base64.b64decode(server_public_key_b64)))
    if isinstance(payload, dict):
        payload = {**payload, "ts": time.time() if ts is None else ts}
    envelope = _seal(box, payload)
    envelope["epk"] = base64.b64encode(bytes(ephemeral.public_key)).decode()
    return envelope, box


def open_reply(reply: dict[str, Any], box: Box) -> Any:
    """Client side: read a sealed reply. A sealed error opens to the full `{"error", "detail", ...}`."""
    return json.loads(box.decrypt(base64.b64decode(reply["ciphertext"]), base64.b64decode(reply["nonce"])))
