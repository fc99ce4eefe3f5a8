"""The status page's login: `POST /session {"token"}` trades API_TOKEN for a session cookie,
`DELETE /session` drops it. services/api/guard.py `authorized()` accepts the cookie wherever
it accepts `Authorization: Bearer`.

The cookie holds `<expiry>.<HMAC-SHA256(key, expiry)>`, the key itself an HMAC of API_TOKEN: a
leaked cookie is not the token, works only until its expiry (API_SESSION_TTL) and dies with
the token (rotating API_TOKEN logs every browser out). Nothing is stored, so every API worker
checks every cookie alike. The cookie is the token's equal meanwhile, so a long random
API_TOKEN matters: a cookie lets its holder test token guesses offline.

Why a cookie cannot be ridden cross-site (CSRF), see README's Security section: it is
`HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page makes the browser send
it), and every state-changing route is POST with a JSON body or DELETE, which a page of another
origin, even a sibling `*.proxy.runpod.net` Pod that counts as the same site, can only send
after a CORS preflight this API never grants (guard.py's JSON rule). Over https (RunPod's proxy
says so with `X-Forwarded-Proto`) it is also `Secure` and named `__Host-…`, which no sibling
host can overwrite.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from datetime import datetime, timezone

from services import logs
from services.api import http
from services.errors import AppError

log = logs.get("api.session")

COOKIE = "appliance_session"
SECURE_COOKIE = "__Host-" + COOKIE  # browsers accept it only with Secure, Path=/ and no Domain
COOKIE_NAMES = (SECURE_COOKIE, COOKIE)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # an expiry in the past deletes a cookie


def _key(token: str) -> bytes:
    return hmac.new(token.encode(), b"appliance status-page session v1", hashlib.sha256).digest()


def mint(token: str, expires: int) -> str:
    mac = hmac.new(_key(token), str(expires).encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def valid(token: str, value: str, now: float) -> bool:
    expires, _, _ = value.partition(".")
    if not expires.isascii() or not expires.isdigit() or len(expires) > 12 or int(expires) <= now:
        return False
    # compare_digest on bytes: str would refuse non-ASCII (a 500) instead of saying no.
    return hmac.compare_digest(mint(token, int(expires)).encode(), value.encode())


def over_https(req) -> bool:
    # RunPod's proxy ends TLS and says so; a client that spoofs the header only gets a cookie its
    # browser will not send back over http.
    forwarded = (req.get_header("X-Forwarded-Proto") or "").split(",")[0].strip().lower()
    return req.scheme == "https" or forwarded == "https"


class SessionResource:
    def __init__(self, settings):
        self.token = settings.api_token
        self.ttl = settings.api_session_ttl

    async def on_post(self, req, resp) -> None:
        body = await http.read_json(req)
        given = body.get("token") if isinstance(body, dict) else None
        if not isinstance(given, str) or not given:
            raise AppError("invalid_payload", 'send {"token": "<API_TOKEN>"}', suffix="token")
        if not self.token:
            # Nothing to log in to: the API serves everyone (loopback without a token).
            http.send_json(resp, {"session": False, "detail": "API_TOKEN is not set; no login needed"})
            return
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            log.warning("session_refused", remote=req.remote_addr)
            raise AppError("unauthorized", "wrong token")
        expires = int(time.time()) + self.ttl
        secure = over_https(req)
        resp.set_cookie(SECURE_COOKIE if secure else COOKIE, mint(self.token, expires), max_age=self.ttl,
                        path="/", secure=secure, http_only=True, same_site="Strict")
        http.send_json(resp, {"session": True, "expires": expires})

    async def on_delete(self, req, resp) -> None:
        # set_cookie rather than unset_cookie: a __Host- cookie is only replaced by a Secure one.
        secure = over_https(req)
        for name in COOKIE_NAMES if secure else (COOKIE,):
            resp.set_cookie(name, "", expires=EPOCH, path="/", secure=secure, http_only=True, same_site="Strict")
        http.send_json(resp, {"session": False})
