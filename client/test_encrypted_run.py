#!/usr/bin/env python3
"""`python client/test_encrypted_run.py [payload.json]`: the deployment guide's encrypted smoke
test (client/smoke.py). Client environment: RP_ENDPOINT_ID, RP_API_KEY, SERVER_PUBLIC_KEY_B64,
RUNPOD_SERVERLESS=1 (or POD_URL and API_TOKEN for a Pod)."""
import sys
from pathlib import Path

# Run as a script, Python puts client/ itself first on the path; the package and services/
# (whose envelope it seals with) are found from the checkout's root instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from client.smoke import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
