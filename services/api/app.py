"""The Pod API: a Falcon ASGI app served by gunicorn with uvicorn workers (etc/gunicorn.conf.py).

ASGI because synchronous `/run` requests wait seconds to minutes on ComfyUI: each waiting
request is a coroutine, not a thread, so hundreds can wait while `/healthz` stays fast.
`create_app()` is the only place that reads settings; gunicorn calls it in each worker.
This process never imports torch.
"""
from __future__ import annotations

import falcon
import falcon.asgi

from services import config, logs
from services.api import comfy_proxy, exposure, http, jobs, models, pages, versions, webhooks
from services.api.executor import JobExecutor, worker_id
from services.api.guard import RequestGuard, authorized
from services.api.health import HealthState
from services.api.metrics import MetricsResource
from services.api.openapi import COMFY_UI_PATHS, OpenApiResource
from services.api.readiness import Readiness
from services.api.session import SessionResource
from services.comfy import backends
from services.comfy.client import ComfyClient
from services.jobs.runner import JobRunner
from services.comfy.supervised import SupervisedComfy
from services.store.comfy_state import ComfyStateStore
from services.store.db import Database
from services.store.downloads import DownloadStore
from services.store.jobs import JobStore
from services.versions.spec import SpecStore
from services.webhooks.startup import check_settings as check_webhook_settings

class Lifespan:
    """Starts each worker's background tasks (job claiming, health refresh) and stops them."""

    def __init__(self, *parts):
        self.parts = parts

    async def process_startup(self, scope, event) -> None:
        for part in self.parts:
            part.start()

    async def process_shutdown(self, scope, event) -> None:
        for part in reversed(self.parts):
            await part.stop()


class HealthResource:
    """Public, for load balancers and Docker's HEALTHCHECK: `/healthz` (`{ok,
    server_public_key_b64}`) and `/readyz` (`{ready}`) to anyone; the details (paths, pids,
    programs, GPU, versions, reasons) only to token holders, or to everyone when no token is
    configured and the API listens on loopback only."""

    def __init__(self, health: HealthState | Readiness, settings):
        self.health = health
        self.token = settings.api_token
        self.details_public = exposure.details_public(settings)

    async def on_get(self, req, resp) -> None:
        detailed = self.details_public or (self.token and authorized(req, self.token))
        http.send_json(resp, self.health.body if detailed else self.health.public_body, self.health.status)


class _Closing:
    """Adapts objects with `close()` to the Lifespan part interface."""

    def __init__(self, *closables):
        self.closables = closables

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        for item in self.closables:
            await item.close()


def create_app(settings: config.Settings | None = None) -> falcon.asgi.App:
    settings = settings or config.load_or_exit()
    exposure.check_bind(settings)  # etc/gunicorn.conf.py refuses first; this covers other servers
    check_webhook_settings(settings)  # python -m services.pod refuses first
    logs.configure_from(settings)
    pod_backends = backends.plan(settings)  # one ComfyUI per GPU
    clients = {b.index: ComfyClient(b.url) for b in pod_backends}
    # COMFY_UI_PROXY's /comfy/ is the first backend's editor; idle (no session) when off.
    proxy = comfy_proxy.ComfyProxy(pod_backends[0].url)
    db = Database(settings.state_db)
    store = JobStore(db)
    owner = worker_id()
    comfy_state = ComfyStateStore(db)
    health = HealthState(settings, pod_backends, clients, comfy_state.runtimes)
    provider = SupervisedComfy(settings, comfy_state, pod_backends, clients, owner, routable=health.routable)
    runner = JobRunner(settings, SpecStore(settings.versions_dir), provider)
    executor = JobExecutor(store, runner, settings, owner, concurrency=settings.api_job_concurrency)
    readiness = Readiness(settings, health, store)

    dispatcher = webhooks.WebhookDispatcher(settings, db, store, owner)
    middleware = [Lifespan(health, readiness, provider, executor, dispatcher,
                           _Closing(runner, *clients.values(), proxy)), RequestGuard(settings)]
    app = falcon.asgi.App(middleware=middleware)
    http.install(app)
    app.add_route("/healthz", HealthResource(health, settings))
    app.add_route("/readyz", HealthResource(readiness, settings))
    app.add_route("/openapi.json", OpenApiResource(COMFY_UI_PATHS if settings.comfy_ui_proxy else None))
    app.add_route("/metrics", MetricsResource(settings, db, health))
    jobs.route(app, settings, runner, executor, store, clients)
    models.route(app, settings, DownloadStore(db))
    versions.route(app, settings, runner.specs)
    app.add_route("/session", SessionResource(settings))
    pages.route(app)
    comfy_proxy.route(app, settings, proxy)
    return app
