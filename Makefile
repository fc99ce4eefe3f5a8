# The two set-up commands README gives a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv run test test-real bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q

# The same suite against a real ComfyUI checkout: COMFYUI_DIR=/path/to/ComfyUI [COMFYUI_PYTHON=...]
test-real: venv
	$(PY) -m pytest -q -m real_comfy

bench: venv
	$(PY) bench/overhead.py
	$(PY) bench/versions.py

clean:
	rm -rf .data .pytest_cache
