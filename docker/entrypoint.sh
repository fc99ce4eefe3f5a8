#!/bin/sh
# The image's entrypoint (tini runs it as PID 1's child, so zombies are reaped in every mode).
#   entrypoint.sh [serverless|api|cli] [args...]
# The mode is the first argument, else RUNPOD_SERVERLESS=1 means serverless, else LAUNCH_MODE
# (default serverless), as the seeds say. Settings are validated by the program it starts.
set -eu

APP_DIR="${APP_DIR:-$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)}"
PYTHON="${APPLIANCE_PYTHON:-python3}"
export PYTHONPATH="$APP_DIR${PYTHONPATH:+:$PYTHONPATH}"

mode=""
case "${1:-}" in
  serverless|api|cli) mode="$1"; shift ;;
esac
if [ -z "$mode" ]; then
  if [ "${RUNPOD_SERVERLESS:-0}" = "1" ]; then mode=serverless; else mode="${LAUNCH_MODE:-serverless}"; fi
fi

# Root in the container only to hand the volume to the unprivileged user, then drop to it.
if [ "$(id -u)" = "0" ] && [ -n "${APPLIANCE_USER:-}" ]; then
  data_root="${DATA_ROOT:-/workspace}"
  mkdir -p "$data_root"
  if chown "$APPLIANCE_USER:$APPLIANCE_USER" "$data_root" 2>/dev/null; then
    # The container's stdout and stderr are root's pipes (0600): supervisord reopens
    # /dev/stdout for the log forwarder, which fails with EACCES after the drop unless the
    # pipes are handed over too. /proc/$$ is this shell's, whose fds are the container's.
    chown "$APPLIANCE_USER" "/proc/$$/fd/1" "/proc/$$/fd/2" 2>/dev/null || true
    exec setpriv --reuid="$APPLIANCE_USER" --regid="$APPLIANCE_USER" --init-groups \
      env HOME="/home/$APPLIANCE_USER" "$0" "$mode" "$@"
  fi
  # A volume that refuses chown (NFS root squash) stays writable only for root.
  echo "entrypoint: cannot hand $data_root to $APPLIANCE_USER; running as root" >&2
fi

cd "$APP_DIR"
case "$mode" in
  api)        exec "$PYTHON" -m services.pod "$@" ;;
  serverless) exec "$PYTHON" -m services.serverless "$@" ;;
  cli)        [ "$#" -gt 0 ] || set -- --help
              exec "$PYTHON" -m services "$@" ;;
  *) echo "entrypoint: LAUNCH_MODE must be serverless, api or cli (got '$mode')" >&2; exit 2 ;;
esac
