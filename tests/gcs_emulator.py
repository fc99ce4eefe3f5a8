"""gcp-storage-emulator as a real process on 127.0.0.1 (Google's own client talks to it)."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.standin_process import free_port


class Emulator:
    def __init__(self, bucket: str = "ci-outputs", port: int | None = None):
        self.bucket = bucket
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Emulator":
        binary = Path(sys.executable).parent / "gcp-storage-emulator"
        self.proc = subprocess.Popen([str(binary), "start", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--in-memory", "--default-bucket", self.bucket, "-q"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1)
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("gcp-storage-emulator did not start")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage
        return storage.Client(project="test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.url})
