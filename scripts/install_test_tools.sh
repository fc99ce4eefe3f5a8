#!/usr/bin/env bash
# Installs what a test needs beyond the venv from Debian's packages, only as root (CI runs as
# root) and only when a command is missing; elsewhere it says so, and the test is skipped with
# the same words.
#   install_test_tools.sh "<the test>" <command>... -- <package>...
set -euo pipefail
what=$1; shift
commands=()
while [ "$1" != "--" ]; do commands+=("$1"); shift; done
shift
missing=0
for c in "${commands[@]}"; do command -v "$c" >/dev/null || missing=1; done
[ "$missing" = 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "$(basename "${0}"): no ${commands[*]} and not root with apt-get: $what will be skipped" >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
