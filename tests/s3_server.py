"""moto's standalone S3 server as a real process on 127.0.0.1 (boto3 talks S3's HTTP API to it).

It keeps its objects in memory: a restarted server is an empty one. Any access key is accepted
(it still checks that requests are signed), so tests use fixed dummy credentials.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

from tests.standin_process import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "ci-access-key", "AWS_SECRET_ACCESS_KEY": "ci-secret-key"}
REGION = "us-east-1"


class S3Server:
    def __init__(self, bucket: str = "ci-outputs", port: int | None = None, min_part_size: int = 5 * 2**20):
        self.bucket = bucket
        self.port = port or free_port()
        self.min_part_size = min_part_size
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "S3Server":
        env = {**os.environ, "S3_UPLOAD_PART_MIN_SIZE": str(self.min_part_size)}
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto's S3 server did not start")
                time.sleep(0.1)
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
