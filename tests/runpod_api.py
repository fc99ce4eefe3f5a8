"""RunPod's public job API on 127.0.0.1, in front of the SDK's local test API (`--rp_serve_api`).

The client speaks RunPod's real paths (`POST /v2/<endpoint>/runsync|run`, `GET
/v2/<endpoint>/status/<job>`, `POST /v2/<endpoint>/cancel/<job>`) with `Authorization: Bearer
<key>`; this server checks both as RunPod does (401 for a wrong key, 404 for another endpoint)
and forwards to the local API's routes (`/runsync`, `/run`, `POST /status/<job>`), so the client
code that runs in tests is the code that talks to RunPod. `requests` records what it received.
"""
from __future__ import annotations

import http.server
import json
import re
import threading
import urllib.error
import urllib.request

_PATH = re.compile(r"/v2/(?P<endpoint>[^/]+)/(?P<op>runsync|run|status|cancel)(?:/(?P<job>[^/]+))?")


class RunPodApi:
    def __init__(self, local_port: int, endpoint_id: str = "ep-test", api_key: str = "rp-key-test"):
        self.local = f"http://127.0.0.1:{local_port}"
        self.endpoint_id, self.api_key = endpoint_id, api_key
        self.requests: list[tuple[str, str, dict]] = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int, body) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                api.requests.append((self.command, self.path, dict(self.headers)))
                match = _PATH.fullmatch(self.path)
                if self.headers.get("Authorization") != f"Bearer {api.api_key}":
                    return self._answer(401, {"error": "Unauthorized"})
                if match is None or match["endpoint"] != api.endpoint_id:
                    return self._answer(404, {"error": "endpoint not found"})
                op, job = match["op"], match["job"]
                if op == "cancel":
                    return self._answer(200, {"id": job, "status": "CANCELLED"})
                if op == "status":
                    return self._answer(*api.forward(f"/status/{job}", b"{}"))
                return self._answer(*api.forward(f"/{op}", body))

            do_GET = do_POST = _handle

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def forward(self, path: str, body: bytes) -> tuple[int, object]:
        request = urllib.request.Request(self.local + path, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    @property
    def base(self) -> str:
        """RUNPOD_API_BASE for clients."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v2"

    def __enter__(self) -> "RunPodApi":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
