"""What every request must satisfy before a route sees it, in this order:

1. its Host header names this server (services/api/exposure.py): DNS rebinding is refused;
2. with API_TOKEN set, `Authorization: Bearer <token>` (the scheme in any case, RFC 6750 §2.1
   via RFC 9110 §11.1; the token compared in constant time), except on the public routes;
3. a request with a body (POST, PUT, PATCH) is `application/json`: a web page can send
   text/plain, form or multipart bodies cross-origin without asking (a CORS "simple request"),
   but never application/json, so this is what stops CSRF against a token-less API.
"""
from __future__ import annotations

import hmac

from services.api import exposure
from services.errors import AppError

PUBLIC_ROUTES = ("/healthz", "/readyz", "/openapi.json")
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

    async def process_request(self, req, resp) -> None:
        header = req.get_header("Host")
        host = exposure.split_host(header)
        if host is None:
            raise AppError("host_not_allowed", "send a Host header naming this server", status=400)
        if not self.hosts.allows(host):
            raise AppError("host_not_allowed", f"host {host[:100]} is not served here; add it to API_ALLOWED_HOSTS")
        if self.token and req.path not in PUBLIC_ROUTES and not token_matches(req.get_header("Authorization"),
                                                                              self.token):
            raise AppError("unauthorized", "send Authorization: Bearer <API_TOKEN>")

    async def process_resource(self, req, resp, resource, params) -> None:
        # After routing, so an unknown route is a 404 and a wrong method a 405, not a 415.
        if (req.method in BODY_METHODS and hasattr(resource, f"on_{req.method.lower()}")
                and not is_json(req.get_header("Content-Type"))):
            raise AppError("unsupported_media_type", "send the body as Content-Type: application/json")
