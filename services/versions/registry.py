"""`versions list`: every version the appliance knows, from its specs and its installed folders.

States: `available` (a spec, not installed), `installed` (matches its spec), `outdated`
(installed from an older spec), `orphaned` (installed, its spec is gone), `invalid_spec`.
`installing` is true while an installer holds the version's lock.
"""
from __future__ import annotations

from typing import Any

from services.errors import AppError
from services.versions.install import state
from services.versions.layout import Layout, installed_ids
from services.versions.lock import is_held
from services.versions.spec import SpecStore


def list_versions(settings, specs: SpecStore) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for version_id in specs.ids():
        try:
            rows[version_id] = {"state": state(specs.load(version_id), settings)}
        except AppError as exc:
            rows[version_id] = {"state": "invalid_spec", "error": exc.code}
    for version_id in installed_ids(settings.versions_root):
        rows.setdefault(version_id, {"state": "orphaned"})
    listed = []
    for version_id, row in sorted(rows.items()):
        layout = Layout.of(settings.versions_root, version_id)
        lock = layout.tree.read_lock() or {}
        listed.append({"id": version_id, **row, "installing": is_held(layout),
                       "comfyui": lock.get("comfyui", {}).get("commit"),
                       "installed_at": lock.get("installed_at"),
                       "path": str(layout.tree.path) if lock else None})
    return listed
