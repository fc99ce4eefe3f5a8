#!/usr/bin/env bash
# What the status page's browser test (tests/test_status_page.py) needs beyond the venv: a
# headless Chromium and its WebDriver, from Debian's packages (`chromium`, `chromium-driver`).
# Installed only as root (CI runs as root) and only when missing; elsewhere the browser test
# says what is missing and is skipped.
set -euo pipefail
command -v chromium >/dev/null && command -v chromedriver >/dev/null && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install_test_browser.sh: no chromium/chromedriver and not root with apt-get: the browser test will be skipped" >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
