#!/usr/bin/env bash
# What the status page's browser test (tests/test_status_page.py) needs beyond the venv: a
# headless Chromium and its WebDriver, from Debian's packages (see install_test_tools.sh).
exec "$(dirname "$0")/install_test_tools.sh" "the browser test" chromium chromedriver -- chromium chromium-driver
