#!/usr/bin/env bash
# What the image test (tests/test_image_docker.py) needs beyond the venv: a Docker engine and
# debootstrap, from Debian's packages. Installed only as root (CI runs as root) and only when
# missing; elsewhere the image test says what is missing and is skipped.
set -euo pipefail
command -v dockerd >/dev/null && command -v debootstrap >/dev/null && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install_test_engine.sh: no dockerd/debootstrap and not root with apt-get: the image test will be skipped" >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
