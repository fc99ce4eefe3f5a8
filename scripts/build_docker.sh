#!/usr/bin/env bash
# Build the appliance image (see the seeds: ./scripts/build_docker.sh --tag runpod-comfy:local).
#   scripts/build_docker.sh --tag T [--version ID] [--bake-models] [--no-cache] [--push]
# Use a new tag per build: RunPod caches images by tag and would keep an old entrypoint.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="" version="demo" bake=0 no_cache=() push=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --bake-models) bake=1; shift ;;
    --no-cache) no_cache=(--no-cache); shift ;;
    --push) push=1; shift ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "build_docker.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$tag" ] || { echo "build_docker.sh: --tag is required" >&2; exit 2; }
[ -f "versions/$version.json" ] || { echo "build_docker.sh: no versions/$version.json" >&2; exit 2; }

docker build --pull "${no_cache[@]}" \
  --build-arg VERSION_ID="$version" --build-arg BAKE_MODELS="$bake" \
  -t "$tag" -f docker/Dockerfile .
if [ "$push" = 1 ]; then docker push "$tag"; fi
