"""Probes of non-loopback addresses, run by tests/test_ssrf_attacks.py inside a fresh network
namespace (`unshare -n`: only loopback exists there), so that nothing could leave the machine
even if the policy failed. Prints one JSON object: every probe with the answer it got.

Probes, each through aiohttp (workflow_url, image URLs) and requests (model downloads):
- every non-loopback spelling of tests/ssrf_tables.py, as a literal;
- a name whose (fake) DNS answer is that address;
- DNS rebinding with a public first answer (the connection must go to it and fail: no route),
  then 127.0.0.1, where a secret is served (must be refused, the secret never read);
- control: a public address the policy allows fails with "no route", proving the namespace.
"""
from __future__ import annotations

import asyncio
import json
import socket
import sys

from services.errors import AppError
from services.jobs.fetch import FetchFailed, fetch_bytes
from services.models.sources import Transient
from services.models.transport import HttpSource
from services.net.aio import guarded_session
from services.net.policy import FetchPolicy
from tests.http_server import LocalServer, static
from tests.ssrf_tables import NON_LOOPBACK, address_of

PUBLIC = "93.184.215.14"


def outcome(call) -> str:
    try:
        call()
    except AppError as exc:
        return exc.code
    except FetchFailed as exc:
        return f"fetch_failed:{exc.reason}"
    except Transient as exc:
        return f"transient:{exc.reason}"
    return "fetched"


def with_aiohttp(policy: FetchPolicy, url: str) -> None:
    async def go():
        session = guarded_session(policy)
        try:
            await fetch_bytes(url, max_bytes=1000, timeout=5, session=session)
        finally:
            await session.close()

    asyncio.run(go())


def with_requests(policy: FetchPolicy, url: str) -> None:
    HttpSource(url, {}, 2, policy).open(0).close()


CLIENTS = {"aiohttp": with_aiohttp, "requests": with_requests}


def main() -> int:
    interfaces = [name for _, name in socket.if_nameindex()]
    if interfaces != ["lo"]:
        # Outside an empty namespace the control probe would really go out: refuse to run.
        print(json.dumps({"error": f"not in an empty network namespace: {interfaces}"}))
        return 2
    probes = []
    names = {f"probe{i}.example": address_of(host) for i, (host, _) in enumerate(NON_LOOPBACK)
             if not host.startswith("metadata")}
    named = FetchPolicy(resolve=lambda host, port: [names[host]])
    for client, fetch in CLIENTS.items():
        for i, (host, why) in enumerate(NON_LOOPBACK):
            probes.append({"client": client, "kind": "literal", "host": host, "expected": f"url_forbidden:{why}",
                           "got": outcome(lambda: fetch(FetchPolicy(), f"http://{host}:80/x"))})
            if f"probe{i}.example" in names:
                probes.append({"client": client, "kind": "name", "host": host, "expected": f"url_forbidden:{why}",
                               "got": outcome(lambda: fetch(named, f"http://probe{i}.example/x"))})
    with LocalServer() as secret:
        secret.route("/secret", static(b"the secret"))
        port = secret.httpd.server_address[1]
        for client, fetch in CLIENTS.items():
            answers = iter([[PUBLIC], ["127.0.0.1"]])
            rebinding = FetchPolicy(resolve=lambda host, port: next(answers))
            url = f"http://rebind.example:{port}/secret"
            unreachable = "fetch_failed:unreachable" if client == "aiohttp" else "transient:unreachable"
            probes.append({"client": client, "kind": "rebind_first", "host": PUBLIC, "expected": unreachable,
                           "got": outcome(lambda: fetch(rebinding, url))})
            probes.append({"client": client, "kind": "rebind_next", "host": "127.0.0.1",
                           "expected": "url_forbidden:loopback", "got": outcome(lambda: fetch(rebinding, url))})
            probes.append({"client": client, "kind": "control", "host": PUBLIC, "expected": unreachable,
                           "got": outcome(lambda: fetch(FetchPolicy(), f"http://{PUBLIC}:{port}/x"))})
        secret_hits = len(secret.hits)
    print(json.dumps({"probes": probes, "secret_hits": secret_hits}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
