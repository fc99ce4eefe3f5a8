"""Which endpoint the client talks to, from the deployment guide's environment variables.

RunPod Serverless: `RP_ENDPOINT_ID`, `RP_API_KEY` (`RUNPOD_SERVERLESS=1` says so explicitly;
`RUNPOD_API_BASE` moves the API, default RunPod's own). A Pod: `POD_URL` and `API_TOKEN`.
`SERVER_PUBLIC_KEY_B64` is the worker's public key (a Pod's is fetched from /healthz if unset).
"""
from __future__ import annotations

from typing import Mapping

from client.endpoints import RUNPOD_API_BASE, PodEndpoint, RunPodEndpoint
from client.errors import ClientError


def _on(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def endpoint(env: Mapping[str, str], *, endpoint_id: str | None = None, pod_url: str | None = None,
             sync: bool = True, timeout: float = 600.0) -> RunPodEndpoint | PodEndpoint:
    endpoint_id = endpoint_id or env.get("RP_ENDPOINT_ID", "")
    pod_url = pod_url or env.get("POD_URL", "")
    if pod_url and not endpoint_id and not _on(env.get("RUNPOD_SERVERLESS")):
        return PodEndpoint(pod_url, env.get("API_TOKEN", ""), timeout=timeout)
    if not endpoint_id:
        raise ClientError("invalid_endpoint", "set RP_ENDPOINT_ID and RP_API_KEY (RunPod Serverless) "
                          "or POD_URL and API_TOKEN (a Pod)")
    return RunPodEndpoint(endpoint_id, env.get("RP_API_KEY", ""),
                          api_base=env.get("RUNPOD_API_BASE") or RUNPOD_API_BASE, sync=sync, timeout=timeout)
