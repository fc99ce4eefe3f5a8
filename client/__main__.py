"""`python -m client keys | public-key | run PAYLOAD`: see README's Encryption section.

Secrets are read from the environment (or stdin), never from the command line, where other
users of the machine can read them (`ps`) and shells keep them (history).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from client import environment, keys, outputs
from client.encrypted import EncryptedClient, send_plain
from client.errors import ClientError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("keys", help="print a new key pair as WORKER_PRIVATE_KEY_B64=... and SERVER_PUBLIC_KEY_B64=...")
    sub.add_parser("public-key", help="print SERVER_PUBLIC_KEY_B64 for WORKER_PRIVATE_KEY_B64 (environment, "
                                      "else one line on stdin)")
    run = sub.add_parser("run", help="run a payload (a JSON file, or - for stdin) encrypted; print the result")
    run.add_argument("payload")
    run.add_argument("--endpoint-id", help="RunPod endpoint id (default RP_ENDPOINT_ID; the key: RP_API_KEY)")
    run.add_argument("--pod-url", help="a Pod's API URL (default POD_URL; the token: API_TOKEN)")
    run.add_argument("--public-key", help="the worker's public key (default SERVER_PUBLIC_KEY_B64; a Pod's is "
                                          "fetched from /healthz)")
    run.add_argument("--async", dest="sync", action="store_false",
                     help="RunPod: submit with /run and poll /status instead of /runsync")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the result (default 600)")
    run.add_argument("--out", type=Path, default=Path("outputs"), help="folder for base64 outputs (default ./outputs)")
    run.add_argument("--plain", action="store_true", help="send the payload in clear (workers without encryption)")
    args = parser.parse_args(argv)
    try:
        if args.command == "keys":
            private, public = keys.generate()
            print("# worker (a RunPod secret / the Pod's environment):", file=sys.stderr)
            print(f"WORKER_PRIVATE_KEY_B64={private}")
            print("# clients:", file=sys.stderr)
            print(f"SERVER_PUBLIC_KEY_B64={public}")
        elif args.command == "public-key":
            private = os.environ.get("WORKER_PRIVATE_KEY_B64") or sys.stdin.readline()
            print(f"SERVER_PUBLIC_KEY_B64={keys.public_of(private)}")
        else:
            return _run(args)
    except ClientError as exc:
        hint = exc.hint()
        print(f"error: {exc}" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return 1
    return 0


def _run(args) -> int:
    text = sys.stdin.read() if args.payload == "-" else Path(args.payload).read_text()
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise ClientError("invalid_payload", f"{args.payload} is not JSON: {exc}") from None
    target = environment.endpoint(os.environ, endpoint_id=args.endpoint_id, pod_url=args.pod_url, sync=args.sync,
                                  timeout=args.timeout)
    if args.plain:
        result = send_plain(target, payload)
    else:
        result = EncryptedClient(target, args.public_key or os.environ.get("SERVER_PUBLIC_KEY_B64")).run(payload)
    for line in outputs.save(result, args.out):
        print(f"output: {line}", file=sys.stderr)
    print(json.dumps(outputs.summary(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
