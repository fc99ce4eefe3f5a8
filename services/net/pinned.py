"""requests/urllib3 under the fetch policy: connections that connect to the checked address.

urllib3 resolves a host when it opens a connection (`_new_conn`). These connections ask the
policy instead, which resolves once and refuses forbidden addresses, and connect to exactly the
addresses it returned; the URL keeps the host name, so the Host header, TLS SNI and certificate
verification all use the name. Connections stay pooled per host as before, so a segmented
download pays one lookup per connection and nothing per piece.
"""
from __future__ import annotations

import socket

import requests.adapters
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection

from services.net.policy import FetchPolicy


class _PinnedConnection:
    policy: FetchPolicy  # set by the pool that creates the connection

    def _new_conn(self) -> socket.socket:
        try:
            addresses = self.policy.addresses(self.host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        error: Exception | None = None
        for address in addresses:
            try:
                # A numeric host: create_connection's getaddrinfo does no lookup.
                return connection.create_connection((address, self.port), self.timeout,
                                                    source_address=self.source_address,
                                                    socket_options=self.socket_options)
            except TimeoutError as exc:
                error = ConnectTimeoutError(self, f"Connection to {self.host} timed out. "
                                                  f"(connect timeout={self.timeout})")
                error.__cause__ = exc
            except OSError as exc:
                error = NewConnectionError(self, f"Failed to establish a new connection: {exc}")
                error.__cause__ = exc
        assert error is not None
        raise error


class PinnedHTTPConnection(_PinnedConnection, HTTPConnection):
    pass


class PinnedHTTPSConnection(_PinnedConnection, HTTPSConnection):
    pass


class _PinnedPool:
    policy: FetchPolicy  # set by the pool manager

    def _new_conn(self):
        conn = super()._new_conn()
        conn.policy = self.policy
        return conn


class PinnedHTTPPool(_PinnedPool, HTTPConnectionPool):
    ConnectionCls = PinnedHTTPConnection


class PinnedHTTPSPool(_PinnedPool, HTTPSConnectionPool):
    ConnectionCls = PinnedHTTPSConnection


class PinnedPoolManager(PoolManager):
    def __init__(self, policy: FetchPolicy, **kwargs):
        super().__init__(**kwargs)
        self.policy = policy
        self.pool_classes_by_scheme = {"http": PinnedHTTPPool, "https": PinnedHTTPSPool}

    def _new_pool(self, scheme, host, port, request_context=None):
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.policy = self.policy
        return pool


class PinnedAdapter(requests.adapters.HTTPAdapter):
    """Mount on a Session for http:// and https://. No proxy: a proxy would connect for us."""

    def __init__(self, policy: FetchPolicy, **kwargs):
        self.policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
        self.poolmanager = PinnedPoolManager(self.policy, num_pools=connections, maxsize=maxsize,
                                             block=block, **pool_kwargs)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        raise requests.exceptions.InvalidProxyURL("fetches on a caller's behalf use no proxy")


def pinned_session(policy: FetchPolicy) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no netrc credentials or proxies from the environment
    adapter = PinnedAdapter(policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
