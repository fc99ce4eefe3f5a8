"""Handing each supervisord program the secrets services/secret_env.py grants it, and no other.

`python -m services.pod` writes the secrets it was started with to a 0600 file beside the
supervisord socket (`<checkout>/.run/secrets.json`: the container's own filesystem, never the
volume, which outlives the Pod and may be shared), then execs supervisord without them, so
neither supervisord nor a program started directly (`comfyui`, `gpuwatch`) has any.
etc/supervisord.conf starts the programs that need some as

    python -m services.pod.grant <program> <command> [args...]

which execs the command with the file's secrets for that program added: the program's
`/proc/<pid>/environ` holds those and nothing more. A missing file is an error, not an empty
grant: the API must not come up without the API_TOKEN it was given.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Mapping

from services import atomic_file, secret_env

FILE_ENV = "APPLIANCE_SECRETS_FILE"  # where the programs find the file (set by services.pod)


def write(path: Path, environ: Mapping[str, str]) -> None:
    """Store the secrets of `environ` at `path` (mode 0600, replaced atomically)."""
    atomic_file.write_text(path, json.dumps(secret_env.secrets_in(environ)), mode=0o600)


def granted(program: str, path: Path) -> dict[str, str]:
    stored = json.loads(path.read_text())
    return {k: v for k, v in stored.items() if k in secret_env.GRANTS[program]}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in secret_env.GRANTS:
        print(f"usage: python -m services.pod.grant {{{','.join(secret_env.GRANTS)}}} <command> [args...]",
              file=sys.stderr)
        sys.exit(2)
    program, command = argv[0], argv[1:]
    path = os.environ.get(FILE_ENV)
    try:
        secrets = granted(program, Path(path)) if path else None
    except (OSError, ValueError) as exc:
        print(f"grant: cannot read the secrets file {path}: {exc}", file=sys.stderr)
        sys.exit(2)
    if secrets is None:
        print(f"grant: {FILE_ENV} is not set; start Pod mode with `python -m services.pod`", file=sys.stderr)
        sys.exit(2)
    env = {**secret_env.env_for(program, os.environ), **secrets}
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
