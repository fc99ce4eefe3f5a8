"""Run a payload encrypted end to end: seal it for the worker's public key, send it, open the
sealed reply. The worker seals everything it answers to an encrypted request, errors included
(only the code's prefix stays readable, for RunPod and for branching), so a failure opens to the
worker's full `{error, detail, ...}` and is raised as a ClientError with that code.

Keys and plaintext are never logged or put in an exception: errors carry codes and the worker's
own details only.
"""
from __future__ import annotations

import binascii
from typing import Any, Protocol

from nacl.exceptions import CryptoError
from nacl.public import Box

from client.endpoints import Reply
from client.errors import ClientError
from client.keys import check_public
from services.security.envelope import open_reply, seal_request


class Endpoint(Protocol):
    def send(self, body: Any) -> Reply: ...

    def public_key(self) -> str: ...


class EncryptedClient:
    def __init__(self, endpoint: Endpoint, server_public_key_b64: str | None = None):
        self.endpoint = endpoint
        self._public_key = check_public(server_public_key_b64) if server_public_key_b64 else None

    @property
    def public_key(self) -> str:
        """SERVER_PUBLIC_KEY_B64 as given, else the one the endpoint publishes (a Pod's /healthz)."""
        if self._public_key is None:
            self._public_key = check_public(self.endpoint.public_key())
        return self._public_key

    def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The job's result; raises ClientError with the worker's code when it failed."""
        envelope, box = seal_request(payload, self.public_key)
        return opened(self.endpoint.send(envelope), box)


def send_plain(endpoint: Endpoint, payload: dict[str, Any]) -> dict[str, Any]:
    """A payload in clear, for workers without encryption (an encryption-required one refuses it)."""
    return opened(endpoint.send(payload), None)


def opened(reply: Reply, box: Box | None) -> dict[str, Any]:
    body = reply.body
    if _sealed(body):
        if box is None:
            raise ClientError("bad_reply", "the worker sealed its answer to a request sent in clear")
        try:
            body = open_reply(body, box)
        except (CryptoError, ValueError, TypeError, binascii.Error):
            raise ClientError("bad_reply", "the sealed answer does not open with this request's key") from None
    elif box is not None and reply.ok:
        raise ClientError("bad_reply", "the worker answered an encrypted request in clear")
    if reply.ok and isinstance(body, dict) and "error" not in body:
        return body
    return _raise(reply, body)


def _raise(reply: Reply, body: Any) -> dict[str, Any]:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        extra = {k: v for k, v in body.items() if k not in ("error", "detail")}
        raise ClientError(body["error"], str(body.get("detail") or ""), extra)
    # RunPod kept only its `error` string: "<code>: <detail>", or the bare code of a sealed error
    # (its suffix and detail can name what the payload held, so they travel sealed in `output`).
    code, _, detail = (reply.error or "runpod_failed").partition(": ")
    raise ClientError(code.strip() or "runpod_failed",
                      detail or "the worker sealed the details, and RunPod returned only the code")


def _sealed(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("ciphertext"), str) and isinstance(body.get("nonce"), str)

