"""`GET /versions` and `GET /versions/{version_id}`: what a client may run and how to set it.

Each version is told by its spec: description, named parameters (type, default, bounds,
choices, the node and input they set), whether it has a default workflow, and its install
state. Never paths, model URLs (a signed URL is a credential) or the workflow itself (a node
input may hold an API key): only what a job's `params` need. Auth is the guard's, as for
every non-public route.
"""
from __future__ import annotations

import asyncio
from typing import Any

import falcon

from services.api.http import send_json
from services.errors import AppError
from services.versions.install import state
from services.versions.spec import SpecStore, VersionSpec


def describe(spec: VersionSpec, settings) -> dict[str, Any]:
    install_state = state(spec, settings)
    return {"id": spec.id, "description": spec.description,
            # `outdated`: installed from an older spec; a job reinstalls it first (or fails)
            "state": install_state, "installed": install_state == "installed",
            "default_workflow": spec.workflow is not None,
            "parameters": {name: p.public() for name, p in spec.parameters.items()}}


def _listing(specs: SpecStore, settings) -> list[dict[str, Any]]:
    rows = []
    for version_id in specs.ids():
        try:
            rows.append(describe(specs.load(version_id), settings))
        except AppError as exc:  # one broken spec must not hide the others
            rows.append({"id": version_id, "state": "invalid_spec", "error": exc.code})
    return rows


class VersionsResource:
    def __init__(self, specs: SpecStore, settings):
        self.specs, self.settings = specs, settings

    async def on_get(self, req, resp) -> None:
        send_json(resp, {"versions": await asyncio.to_thread(_listing, self.specs, self.settings)})


class VersionResource:
    def __init__(self, specs: SpecStore, settings):
        self.specs, self.settings = specs, settings

    async def on_get(self, req, resp, version_id: str) -> None:
        def one() -> dict[str, Any]:
            return describe(self.specs.load(version_id), self.settings)  # unknown_version: 404
        send_json(resp, await asyncio.to_thread(one))


def route(app: falcon.asgi.App, settings, specs: SpecStore) -> None:
    app.add_route("/versions", VersionsResource(specs, settings))
    app.add_route("/versions/{version_id}", VersionResource(specs, settings))
