#!/usr/bin/env bash
# Build the appliance image (see the seeds: ./scripts/build_docker.sh --tag runpod-comfy:local).
#   scripts/build_docker.sh --tag T [--version ID] [--bake-models] [--base IMAGE]
#       [--torch-index URL] [--torch-packages "torch==… torchvision==…" | --no-torch]
#       [--pull] [--no-cache] [--network MODE] [--build-arg NAME=VALUE]... [--push]
# The defaults build the CUDA image for RunPod. --pull refreshes the base image from its
# registry (omit it where none is reachable); --no-torch skips torch (test images).
# Use a new tag per build: RunPod caches images by tag and would keep an old entrypoint.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="" version="demo" push=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --bake-models) args+=(--build-arg BAKE_MODELS=1); shift ;;
    --base) args+=(--build-arg "CUDA_BASE=$2"); shift 2 ;;
    --torch-index) args+=(--build-arg "TORCH_INDEX_URL=$2"); shift 2 ;;
    --torch-packages) args+=(--build-arg "TORCH_PACKAGES=$2"); shift 2 ;;
    --no-torch) args+=(--build-arg "TORCH_PACKAGES="); shift ;;
    --build-arg) args+=(--build-arg "$2"); shift 2 ;;
    --network) args+=(--network "$2"); shift 2 ;;
    --pull|--no-cache) args+=("$1"); shift ;;
    --push) push=1; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "build_docker.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$tag" ] || { echo "build_docker.sh: --tag is required" >&2; exit 2; }
[ -f "versions/$version.json" ] || { echo "build_docker.sh: no versions/$version.json" >&2; exit 2; }

docker build "${args[@]}" --build-arg VERSION_ID="$version" -t "$tag" -f docker/Dockerfile .
if [ "$push" = 1 ]; then docker push "$tag"; fi
