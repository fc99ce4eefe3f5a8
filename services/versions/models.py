"""A version's models, through the model store (services/models/): checked against the shared
cache (size and sha256, through the hash index, so unchanged files are not read again) and,
when asked, fetched into it. Each verified model counts as used now (the cache budget evicts
the least recently used: services/models/budget.py)."""
from __future__ import annotations

from typing import Any

from services.models import usage
from services.models.locks import owner_token
from services.models.verify import verify_models
from services.versions.spec import VersionSpec


def check_models(spec: VersionSpec, settings, *, fix: bool = False) -> list[dict[str, Any]]:
    """One problem per model that is not verified (after fetching it when `fix`); empty when all are."""
    if not spec.models:
        return []
    reports = verify_models(settings, spec.models, fix=fix, owner=owner_token())
    usage.touch(settings, [r.path for r in reports if r.ok])
    return [{"model": r.name, "type": r.type, "problem": r.status, "path": r.path, "error": r.error,
             "detail": r.detail} for r in reports if not r.ok]
