"""`output_mode=s3` upload throughput against a plain boto3 `upload_file`, same server, same run.

    python bench/s3_upload.py [--mb 200] [--rounds 3]

Starts moto's S3 server on 127.0.0.1 (tests/s3_server.py), writes one random file, then each
round uploads it through S3Destination.deliver() (CRC32 of the file, look-up, create-only
multipart upload with a whole-object checksum, verification) and through
`client.upload_file` with boto3's defaults, alternating which goes first. Each object is
deleted after it is timed (moto keeps them in memory). Prints MB/s per round and, last,
`ours_mbps=<x> plain_mbps=<y> ratio=<ours/plain>` (medians).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.config import Settings  # noqa: E402
from services.outputs.s3 import S3Destination  # noqa: E402
from tests.s3_server import CREDENTIALS, REGION, S3Server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    size = args.mb * 10**6
    server = S3Server().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "out.bin"
            with path.open("wb") as f:
                for _ in range(args.mb):
                    f.write(os.urandom(10**6))
            sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
            dest = S3Destination(Settings.from_env({"S3_ENDPOINT_URL": server.url, "S3_REGION": REGION}))
            target = dest.target({"s3_bucket": server.bucket, "s3_prefix": "bench"}, dest.settings)
            client = server.client()

            def ours(n: int) -> str:
                result = asyncio.run(dest.deliver(target, f"ours-{n}", "out.bin", path, size, sha256,
                                                  "application/octet-stream", {}))
                return result["s3_url"].split("/", 3)[3]

            def plain(n: int) -> str:
                key = f"bench/plain-{n}/out.bin"
                client.upload_file(str(path), server.bucket, key)
                return key

            speeds: dict[str, list[float]] = {"ours": [], "plain": []}
            for n in range(args.rounds):
                order = [("ours", ours), ("plain", plain)]
                for name, upload in order if n % 2 == 0 else order[::-1]:
                    started = time.perf_counter()
                    key = upload(n)
                    speeds[name].append(size / 1e6 / (time.perf_counter() - started))
                    client.delete_object(Bucket=server.bucket, Key=key)
                print(f"round {n + 1}: ours {speeds['ours'][-1]:.1f} MB/s, plain {speeds['plain'][-1]:.1f} MB/s",
                      flush=True)
    finally:
        server.stop()
    ours_mbps, plain_mbps = statistics.median(speeds["ours"]), statistics.median(speeds["plain"])
    print(f"ours_mbps={ours_mbps:.1f} plain_mbps={plain_mbps:.1f} ratio={ours_mbps / plain_mbps:.2f}")


if __name__ == "__main__":
    main()
