"""Docker HEALTHCHECK: in api mode, /healthz must answer 200; other modes have no port."""
import sys
import urllib.error
import urllib.request

sys.path.insert(0, "/opt/appliance")

from services.config import load_or_exit  # noqa: E402

settings = load_or_exit()
if settings.mode != "api":
    sys.exit(0)
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.api_port}/healthz", timeout=4) as resp:
        sys.exit(0 if resp.status == 200 else 1)
except (urllib.error.URLError, OSError):
    sys.exit(1)
