"""The model cache's budget (services/models/budget.py), with real files on disk and the real
modelsync: least recently used models go until the cache fits, never the models of an active
version, of a running job's lease or of a download in progress."""
import json
import os
import threading
import time

from services.models import budget, usage
from services.models.cache import cache_root
from services.models.locks import LockFile, owner_token
from services.modelsync.daemon import ModelSync
from services.store.db import Database
from services.store.downloads import DownloadStore
from services.versions.models import check_models
from services.versions.spec import SpecStore
from tests.http_server import LocalServer, static
from tests.model_fixtures import dead_owner, make_settings, payload, sha, write_spec

KB = 1000
DAY = 86400


def put(settings, name, seed, *, age_days, type="checkpoints"):
    """A model file of 1000 bytes, last written `age_days` ago and never used since."""
    path = cache_root(settings) / type / name
    path.parent.mkdir(parents=True, exist_ok=True)
    data = payload(KB, seed)
    path.write_bytes(data)
    then = time.time() - age_days * DAY
    os.utime(path, (then, then))
    return path, data


def spec_model(path, data, url="https://example.com/m"):
    return {"name": path.name, "type": path.parent.name, "url": url, "size": len(data), "sha256": sha(data)}


def sync_for(settings):
    return ModelSync(settings, DownloadStore(Database(settings.state_db)), SpecStore(settings.versions_dir))


def present(settings):
    root = cache_root(settings)
    return sorted(f"{p.parent.name}/{p.name}" for p in root.glob("*/*")
                  if not p.parent.name.startswith(".") and not p.name.startswith("."))


def test_least_recently_used_go_first_and_protected_models_stay(tmp_path):
    settings = make_settings(tmp_path, MODEL_CACHE_MAX_BYTES=str(5 * KB), ACTIVE_VERSIONS="live")
    active, active_data = put(settings, "active.safetensors", 1, age_days=90)     # oldest: an active version's
    leased, leased_data = put(settings, "leased.safetensors", 2, age_days=80)     # a running job holds it
    loading, _ = put(settings, "loading.safetensors", 3, age_days=70)             # a fetch holds its lock
    old, _ = put(settings, "old.safetensors", 4, age_days=60, type="loras")
    older_dead_lease, _ = put(settings, "dead-lease.safetensors", 5, age_days=65)  # its job died
    used, used_data = put(settings, "used.safetensors", 6, age_days=100)          # written first, used just now
    recent, _ = put(settings, "recent.safetensors", 7, age_days=1)
    os.link(recent, recent.with_name("recent-alias.safetensors"))                 # one model, two names
    write_spec(settings, "live", [spec_model(active, active_data)])
    write_spec(settings, "busy", [spec_model(leased, leased_data)])
    write_spec(settings, "other", [spec_model(used, used_data)])
    specs = SpecStore(settings.versions_dir)
    assert check_models(specs.load("other"), settings) == []  # a verify counts as a use
    dead = cache_root(settings) / usage.IN_USE / f"{dead_owner()}.json"
    dead.parent.mkdir(parents=True, exist_ok=True)
    dead.write_text(json.dumps({"models": [str(older_dead_lease)]}))
    # 7 models, 7000 bytes (the hard link counts once) against a budget of 5000.
    with usage.InUse(settings, specs.load("busy").models), \
            LockFile(loading.with_name(f".{loading.name}.lock"), owner_token(), 60):
        assert not sync_for(settings).step()  # nothing to download: the periodic enforcement
        assert present(settings) == ["checkpoints/active.safetensors", "checkpoints/leased.safetensors",
                                     "checkpoints/loading.safetensors", "checkpoints/recent-alias.safetensors",
                                     "checkpoints/recent.safetensors", "checkpoints/used.safetensors"]
    assert budget.evictions(settings.run_dir) == 2  # dead-lease (65 days), then old (60 days)
    assert not dead.exists()  # the dead job's lease went with it
    assert not (cache_root(settings) / usage.USED / "loras" / "old.safetensors").exists()
    assert list((cache_root(settings) / usage.IN_USE).iterdir()) == []  # the job's lease ended with it

    # The job ended and the download finished: with a lower budget the next oldest go, the
    # active version's model still stays however old it is.
    settings = make_settings(tmp_path, MODEL_CACHE_MAX_BYTES=str(2 * KB), ACTIVE_VERSIONS="live")
    sync_for(settings).enforce_budget()
    assert present(settings) == ["checkpoints/active.safetensors", "checkpoints/used.safetensors"]
    assert budget.evictions(settings.run_dir) == 5


def test_over_budget_with_only_protected_models_evicts_nothing(tmp_path):
    settings = make_settings(tmp_path, MODEL_CACHE_MAX_BYTES=str(KB), ACTIVE_VERSIONS="live")
    a, a_data = put(settings, "a.safetensors", 1, age_days=9)
    b, b_data = put(settings, "b.safetensors", 2, age_days=9)
    write_spec(settings, "live", [spec_model(a, a_data), spec_model(b, b_data)])
    sync_for(settings).enforce_budget()
    assert present(settings) == ["checkpoints/a.safetensors", "checkpoints/b.safetensors"]
    assert budget.evictions(settings.run_dir) == 0


def test_an_active_version_that_cannot_be_read_stops_eviction(tmp_path):
    """Without its spec the active models are unknown: evicting could delete one of them."""
    settings = make_settings(tmp_path, MODEL_CACHE_MAX_BYTES=str(KB), ACTIVE_VERSIONS="missing")
    put(settings, "a.safetensors", 1, age_days=9)
    put(settings, "b.safetensors", 2, age_days=9)
    sync_for(settings).enforce_budget()
    assert present(settings) == ["checkpoints/a.safetensors", "checkpoints/b.safetensors"]


def test_no_budget_evicts_nothing(tmp_path):
    settings = make_settings(tmp_path, ACTIVE_VERSIONS="bare")
    write_spec(settings, "bare", [])
    put(settings, "a.safetensors", 1, age_days=400)
    sync_for(settings).enforce_budget()
    assert present(settings) == ["checkpoints/a.safetensors"]


def test_the_daemon_makes_room_after_a_download(tmp_path):
    settings = make_settings(tmp_path, MODEL_CACHE_MAX_BYTES=str(int(1.5 * KB)), ACTIVE_VERSIONS="bare",
                             MODELSYNC_POLL_INTERVAL="0.05")
    write_spec(settings, "bare", [])
    put(settings, "stale.safetensors", 1, age_days=30)
    data = payload(KB, 9)
    sync = sync_for(settings)
    with LocalServer() as server:
        url = server.route("/new.safetensors", static(data, content_type="application/octet-stream"))
        sync.downloads.enqueue(url=url, type="checkpoints", filename="new.safetensors", sha256=sha(data),
                               size=len(data))
        loop = threading.Thread(target=sync.run)
        loop.start()
        try:
            deadline = time.monotonic() + 30
            while present(settings) != ["checkpoints/new.safetensors"] and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            sync.stop.set()
            loop.join(30)
    assert present(settings) == ["checkpoints/new.safetensors"]
    assert budget.evictions(settings.run_dir) == 1
