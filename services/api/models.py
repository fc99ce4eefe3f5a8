"""`/download`, `/downloads` and `/models/ls`: queueing model downloads for the `modelsync`
program and listing what ComfyUI can load. Validation (the URL under the fetch policy, type,
file name, sha256, `replace`) is the model store's (services/models/intake.py), so the API and
modelsync apply the same rules. Listings show URLs through `public_url` (no credentials)."""
from __future__ import annotations

import asyncio

import falcon

from services.api.http import read_json, send_json
from services.errors import AppError
from services.models.intake import queue_download
from services.models.listing import list_models
from services.store.downloads import DownloadStore


class DownloadResource:
    def __init__(self, store: DownloadStore, settings):
        self.store = store
        self.settings = settings

    async def on_post(self, req, resp) -> None:
        body = await read_json(req)
        if not isinstance(body, dict):
            raise AppError("invalid_payload", "the body must be a JSON object", suffix="body")
        if "filename" not in body and isinstance(body.get("url"), str):
            # The seeds' /download names no file: take the URL's last path segment.
            body["filename"] = body["url"].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        download = await asyncio.to_thread(
            queue_download, self.store, self.settings, url=body.get("url"), type=body.get("type"),
            filename=body.get("filename"), sha256=body.get("sha256"), size=body.get("size"),
            replace=body.get("replace", False))
        resp.set_header("Location", f"/downloads/{download.id}")
        send_json(resp, {"download_id": download.id, "state": download.state}, 202)


class DownloadsResource:
    def __init__(self, store: DownloadStore):
        self.store = store

    async def on_get(self, req, resp) -> None:
        limit = req.get_param_as_int("limit", min_value=1, max_value=1000, default=100)
        downloads = await asyncio.to_thread(self.store.list, limit)
        send_json(resp, {"downloads": [d.public() for d in downloads]})


class DownloadStatusResource:
    def __init__(self, store: DownloadStore):
        self.store = store

    async def on_get(self, req, resp, download_id: str) -> None:
        download = await asyncio.to_thread(self.store.get, download_id)
        if download is None:
            raise AppError("not_found", f"no download {download_id}")
        send_json(resp, download.public())


class ModelsListResource:
    def __init__(self, settings):
        self.settings = settings

    async def on_get(self, req, resp) -> None:
        send_json(resp, {"models": await asyncio.to_thread(list_models, self.settings, req.get_param("type"))})


def route(app: falcon.asgi.App, settings, store: DownloadStore) -> None:
    app.add_route("/download", DownloadResource(store, settings))
    app.add_route("/downloads", DownloadsResource(store))
    app.add_route("/downloads/{download_id}", DownloadStatusResource(store))
    app.add_route("/models/ls", ModelsListResource(settings))
