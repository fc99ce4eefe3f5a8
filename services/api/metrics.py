"""`GET /metrics`: Prometheus' text format, built at scrape time (services/metrics/collector.py).

Token-protected like every other route unless METRICS_PUBLIC=1 opens it (services/api/guard.py):
the numbers map the machine (versions, programs, GPUs). The scrape reads SQLite and walks the
model folders, so it runs in a thread, never on the event loop that serves `/healthz`.
"""
from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.api.health import HealthState
from services.metrics.collector import ApplianceCollector
from services.store.db import Database


class MetricsResource:
    def __init__(self, settings, db: Database, health: HealthState):
        # A registry of our own: the process-wide default one would add this worker's own
        # process and GC numbers, which differ from worker to worker.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ApplianceCollector(settings, db, lambda: health.snapshot, health.backends))

    async def on_get(self, req, resp) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = await asyncio.to_thread(generate_latest, self.registry)
