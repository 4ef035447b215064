# Fresh machine: `make demo` and `make test` create .venv and install everything on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
STAMP := $(VENV)/.installed

.PHONY: install browser demo test test-unit test-all lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium + driver for the web-page test (Debian packages; installed when root, as in CI).
browser:
	@if [ "$$(id -u)" = 0 ]; then \
		(command -v chromium && command -v chromedriver) >/dev/null || \
		(apt-get update && apt-get install -y chromium chromium-driver); \
	fi

demo: install
	$(PY) -m jobs.demo --config configs/tiny.yaml

test: install browser
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

# The fast loop: no Ray, Serve or other servers (1-2 minutes).
test-unit: install
	$(PY) -m pytest -m "not slow and not gpu and not integration" $(PYTEST_ARGS)

test-all: install browser
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf outputs mlruns mlflow.db .pytest_cache
