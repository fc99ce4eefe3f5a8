"""What every request must satisfy before a route sees it, in this order:

1. its Host header names this server (services/api/exposure.py): DNS rebinding is refused;
2. with API_TOKEN set, `Authorization: Bearer <token>` (the scheme in any case, RFC 6750 §2.1
   via RFC 9110 §11.1; the token compared in constant time) or the status page's session
   cookie (services/api/session.py), except on the public routes: `authorized()` is the one
   check, for every route that needs it;
3. a request with a body (POST, PUT, PATCH) is `application/json`: a web page can send
   text/plain, form or multipart bodies cross-origin without asking (a CORS "simple request"),
   but never application/json, so this is what stops CSRF against a token-less API (the
   /comfy/ proxy of ComfyUI's own UI, whose uploads are multipart, checks the Origin instead).

Websocket upgrades get checks 1 and 2 too (`process_request_ws`).
"""
from __future__ import annotations

import hmac
import time

from services.api import exposure, session
from services.errors import AppError

# The pages and their files hold no data (they fetch it with the visitor's credentials), and
# /session is where a browser without credentials gets them.
PUBLIC_ROUTES = ("/healthz", "/readyz", "/openapi.json", "/", "/docs", "/session")
PUBLIC_PREFIXES = ("/status/", "/docs/")
BODY_METHODS = ("POST", "PUT", "PATCH")


def bearer_token(header: str | None) -> str | None:
    """The credentials of `Bearer <token>` (scheme case-insensitive), else None."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip(" ")
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def token_matches(header: str | None, expected: str) -> bool:
    given = bearer_token(header)
    # compare_digest on bytes: str would refuse non-ASCII (a 500) and short-cut nothing.
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def authorized(req, token: str) -> bool:
    """Whether `req` carries API_TOKEN: `Authorization: Bearer` or a live session cookie."""
    if token_matches(req.get_header("Authorization"), token):
        return True
    now = time.time()
    return any(session.valid(token, value, now)
               for name in session.COOKIE_NAMES for value in req.get_cookie_values(name) or ())


def is_public(path: str) -> bool:
    return path in PUBLIC_ROUTES or path.startswith(PUBLIC_PREFIXES)


def is_json(content_type: str | None) -> bool:
    media, _, params = (content_type or "").partition(";")
    if media.strip().lower() != "application/json":
        return False
    for param in filter(None, (p.strip() for p in params.split(";"))):
        name, _, value = param.partition("=")
        # JSON is UTF-8 (RFC 8259 §8.1); a body declared in another charset is not.
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


class RequestGuard:
    def __init__(self, settings):
        self.hosts = exposure.HostPolicy(settings)
        self.token = settings.api_token
        # METRICS_PUBLIC=1: a Prometheus that cannot send the token may scrape (services/api/metrics.py).
        self.opened = ("/metrics",) if settings.metrics_public else ()

    async def process_request(self, req, resp) -> None:
        header = req.get_header("Host")
        host = exposure.split_host(header)
        if host is None:
            raise AppError("host_not_allowed", "send a Host header naming this server", status=400)
        if not self.hosts.allows(host):
            raise AppError("host_not_allowed", f"host {host[:100]} is not served here; add it to API_ALLOWED_HOSTS")
        if self.token and not is_public(req.path) and req.path not in self.opened and not authorized(req, self.token):
            raise AppError("unauthorized", "send Authorization: Bearer <API_TOKEN>")

    async def process_request_ws(self, req, ws) -> None:
        # A websocket upgrade (the /comfy/ws bridge) passes the same Host and credential checks; a
        # refusal closes the handshake before it is accepted (http.py: the client gets HTTP 403).
        await self.process_request(req, None)

    async def process_resource(self, req, resp, resource, params) -> None:
        # After routing, so an unknown route is a 404 and a wrong method a 405, not a 415. The
        # /comfy/ proxy is a sink (resource None): ComfyUI's uploads are multipart, so it checks
        # the Origin instead (services/api/comfy_proxy.py).
        if (req.method in BODY_METHODS and hasattr(resource, f"on_{req.method.lower()}")
                and not is_json(req.get_header("Content-Type"))):
            raise AppError("unsupported_media_type", "send the body as Content-Type: application/json")
