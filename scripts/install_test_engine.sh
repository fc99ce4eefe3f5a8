#!/usr/bin/env bash
# What the image test (tests/test_image_docker.py) needs beyond the venv: a Docker engine and
# debootstrap, from Debian's packages (see install_test_tools.sh).
exec "$(dirname "$0")/install_test_tools.sh" "the image test" dockerd debootstrap -- docker.io debootstrap
