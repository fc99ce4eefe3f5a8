"""The Pod API's two web pages, plain files without a build step: the status page (`GET /`,
services/api/status/) and the interactive API docs (`GET /docs`: Swagger UI from the pinned
swagger-ui-bundle-v2 package rendering /openapi.json; nothing comes from a CDN).

The files are read once per worker into memory from a fixed list (no path from a request ever
reaches the file system) and answered with an ETag and `Cache-Control: no-cache`: the names
stay the same across upgrades, so a browser revalidates (a 304 costs one round trip) rather
than mixing an old script with a new page. A Content-Security-Policy keeps each page to its
own origin's scripts and requests, and out of other sites' frames (the login form).
"""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from swagger_ui_bundle import swagger_ui_path

from services.errors import AppError

STATUS_DIR = Path(__file__).with_name("status")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
_CSP_COMMON = ("default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
STATUS_CSP = _CSP_COMMON + "; style-src 'self'"
# Swagger UI's React components set style attributes.
DOCS_CSP = _CSP_COMMON + "; style-src 'self' 'unsafe-inline'"
GZIP_MIN_BYTES = 1024


@dataclass(frozen=True)
class Asset:
    data: bytes
    gzipped: bytes | None
    content_type: str
    etag: str
    csp: str | None

    @classmethod
    def load(cls, path: Path, csp: str | None = None) -> "Asset":
        data = path.read_bytes()
        # Swagger UI's bundle is 1.5 MB, about a third of that gzipped: worth it through RunPod's proxy.
        gzipped = gzip.compress(data, mtime=0) if len(data) >= GZIP_MIN_BYTES else None
        return cls(data, gzipped, CONTENT_TYPES[path.suffix], f'"{hashlib.sha256(data).hexdigest()[:32]}"', csp)

    def send(self, req, resp) -> None:
        resp.content_type = self.content_type
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("ETag", self.etag)
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "no-referrer")
        if self.csp:
            resp.set_header("Content-Security-Policy", self.csp)
        if self.gzipped is not None:
            resp.set_header("Vary", "Accept-Encoding")
        if self.etag in (req.get_header("If-None-Match") or ""):
            resp.status = 304
            return
        if self.gzipped is not None and "gzip" in (req.get_header("Accept-Encoding") or "").lower():
            resp.set_header("Content-Encoding", "gzip")
            resp.data = self.gzipped
        else:
            resp.data = self.data


class Page:
    def __init__(self, asset: Asset):
        self.asset = asset

    async def on_get(self, req, resp) -> None:
        self.asset.send(req, resp)


class Folder:
    def __init__(self, assets: dict[str, Asset]):
        self.assets = assets

    async def on_get(self, req, resp, name: str) -> None:
        asset = self.assets.get(name)
        if asset is None:
            raise AppError("not_found", f"no file {name[:100]!r} here")
        asset.send(req, resp)


def route(app) -> None:
    app.add_route("/", Page(Asset.load(STATUS_DIR / "index.html", STATUS_CSP)))
    app.add_route("/status/{name}", Folder({name: Asset.load(STATUS_DIR / name) for name in ("app.js", "style.css")}))
    app.add_route("/docs", Page(Asset.load(STATUS_DIR / "docs.html", DOCS_CSP)))
    swagger = Path(str(swagger_ui_path))
    app.add_route("/docs/{name}", Folder({
        "docs.js": Asset.load(STATUS_DIR / "docs.js"),
        **{name: Asset.load(swagger / name) for name in ("swagger-ui.css", "swagger-ui-bundle.js")}}))
