"""The appliance's client: key pairs, encrypted runs against a RunPod endpoint or a Pod, outputs
written to disk. `python -m client --help`; the guide's smoke test: client/test_encrypted_run.py.

    from client import EncryptedClient, RunPodEndpoint
    result = EncryptedClient(RunPodEndpoint(endpoint_id, api_key), public_key_b64).run(payload)
"""
from client.encrypted import EncryptedClient, send_plain
from client.endpoints import PodEndpoint, RunPodEndpoint
from client.errors import ClientError

__all__ = ["ClientError", "EncryptedClient", "PodEndpoint", "RunPodEndpoint", "send_plain"]
