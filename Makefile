# The two set-up commands README gives a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv run test test-image test-engine test-browser test-real bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# Pod mode on loopback with local defaults (base64 output, data under .data/).
run: venv
	$(PY) -m services.pod

test: venv test-engine test-browser
	$(PY) -m pytest -q

# Only the image test: builds docker/Dockerfile in a private Docker engine and runs both modes.
test-image: venv test-engine
	$(PY) -m pytest -q -s -m docker

test-engine:
	@scripts/install_test_engine.sh

# Headless Chromium for the status page's browser test (tests/test_status_page.py).
test-browser:
	@scripts/install_test_browser.sh

# The ComfyUI-facing tests against a real ComfyUI checkout instead of the stand-in:
#   make test-real COMFYUI_DIR=/path/to/ComfyUI [COMFYUI_PYTHON=/path/to/its/python]
test-real: venv
	test -n "$(COMFYUI_DIR)" || { echo "set COMFYUI_DIR=/path/to/ComfyUI"; exit 2; }
	COMFYUI_DIR="$(COMFYUI_DIR)" $(PY) -m pytest -q -m comfy

# Benchmarks print ratios against baselines measured in the same run (never part of `make test`).
bench: venv
	$(PY) bench/overhead.py
	$(PY) bench/api.py
	$(PY) bench/throughput.py
	$(PY) bench/serverless.py
	$(PY) bench/models.py
	$(PY) bench/versions.py
	$(PY) bench/s3_upload.py
	$(PY) bench/view_stream.py

clean:
	rm -rf .data .pytest_cache
