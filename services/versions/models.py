"""Whether a version's models are in the shared cache.

Stand-in for the model store (services/models/), which will fetch and verify them: until it
lands, installing and verifying a version only look for each model at
`COMFY_CACHE_ROOT/models/<canonical type>/<name>` and compare its size. `check_models` is the
one function the model store replaces.
"""
from __future__ import annotations

from typing import Any

from services import model_types
from services.versions.spec import VersionSpec


def check_models(spec: VersionSpec, settings) -> list[dict[str, Any]]:
    """One problem per model that is missing or has the wrong size; empty when all are there."""
    problems = []
    for model in spec.models:
        path = settings.comfy_cache_root / "models" / model_types.canonical(model.type) / model.name
        try:
            size = path.stat().st_size
        except OSError:
            problems.append({"model": model.name, "type": model.type, "problem": "missing", "path": str(path)})
            continue
        if model.size is not None and size != model.size:
            problems.append({"model": model.name, "type": model.type, "problem": "size",
                             "path": str(path), "expected": model.size, "found": size})
    return problems
