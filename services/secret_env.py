"""Least secret: which secret each program of the appliance is started with, in one registry.

ComfyUI runs third-party custom nodes, and a node that logs or reports its environment (or
a library that picks up Google's default credentials on its own) would leak whatever ComfyUI
was started with. `/proc/<pid>/environ` shows the environment a process was exec'd with,
whatever it deletes later, so every program is *exec'd* with only what it needs:

- Pod mode: `python -m services.pod` writes the secrets to a 0600 file and starts supervisord
  without any (services/pod/grant.py); the programs that need some are started through
  `python -m services.pod.grant <program> ...`, which adds exactly the ones granted here.
- ComfyUI (Pod mode's `comfyui` program, and the child the serverless worker and the CLI
  start: services/comfy/launcher.py) and the git/pip runs of version installs (third-party
  build code) get `env_for(...)` of their name: no secret at all.

What this does not do: every program runs as the same user, so code that sets out to read
the secrets file or another program's memory still can; only separate users would stop that.
"""
from __future__ import annotations

from typing import Mapping

from services.config import SETTINGS

# Every variable that holds a secret or points at one. GOOGLE_APPLICATION_CREDENTIALS is a path,
# but Google's libraries load it by themselves: any custom node using them would act as us.
# RunPod puts its own API keys into Pods (RUNPOD_API_KEY) and workers (RUNPOD_AI_API_KEY).
# The AWS variables are boto3's standard chain for `output_mode=s3` (AWS_PROFILE names the
# credentials of ~/.aws that a custom node using boto3 would otherwise pick up).
_AWS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"})
SECRETS: frozenset[str] = frozenset(
    {name for setting in SETTINGS if setting.secret for name in setting.env}
    | {"GOOGLE_APPLICATION_CREDENTIALS", "RUNPOD_API_KEY", "RUNPOD_AI_API_KEY"} | _AWS)

_DOWNLOADS = frozenset({"HF_TOKEN", "CIVITAI_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS"})

GRANTS: dict[str, frozenset[str]] = {
    # The Pod API checks tokens, opens envelopes, signs webhooks, uploads to GCS and S3 and
    # fetches a job's missing models.
    "api": frozenset({"API_TOKEN", "WORKER_PRIVATE_KEY_B64", "WEBHOOK_SECRET"}) | _DOWNLOADS | _AWS,
    "modelsync": _DOWNLOADS,
    "comfyui": frozenset(),
    "gpuwatch": frozenset(),
    "logforward": frozenset(),
    "supervisord": frozenset(),  # its children could read /proc/<parent>/environ
    "installer": frozenset(),    # git and pip: pip runs third-party build code
}


def env_for(program: str, environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without every secret `program` is not granted (KeyError for an unknown program)."""
    granted = GRANTS[program]
    return {k: v for k, v in environ.items() if k not in SECRETS or k in granted}


def secrets_in(environ: Mapping[str, str]) -> dict[str, str]:
    """The secrets `environ` holds (set and non-empty)."""
    return {k: v for k, v in environ.items() if k in SECRETS and v}
