# Fresh machine: `make demo` and `make test` create .venv and install everything on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# $(call pin,<package>): the package's "name==version" from pyproject.toml.
pin = $(shell grep -o '"$(1)==[^"]*"' pyproject.toml | tr -d '"')
TORCH_PIN := $(call pin,torch)
UV_PIN := $(call pin,uv)
STAMP := $(VENV)/.installed

.PHONY: install browser demo reproduce test test-unit test-random test-all lint format clean

UV := $(VENV)/bin/uv pip install --python $(PY) -q --compile-bytecode
# Local wheels that pip is told about (here: the CPU torch) reach uv too.
FIND_LINKS := $(foreach link,$(PIP_FIND_LINKS),--find-links $(link))
# $(call install_with,<installer command>): torch first, from its pin, then the project.
install_with = $(1) "$(TORCH_PIN)" && $(1) -e ".[dev]"

# uv installs the same versions as pip in under half the time (a fresh .venv: 63 s against 161 s).
# --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, as here, every Ray process
# would otherwise compile torch's and diffusers' sources at each import (two Ray tests: 284 s
# against 122 s). pip if uv fails.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if $(PY) -m pip install -q "$(UV_PIN)" && $(call install_with,$(UV) $(FIND_LINKS)); then :; else \
		echo "uv failed: installing with pip" && $(PY) -m pip install -q --upgrade pip && \
		$(call install_with,$(PY) -m pip install -q); fi
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

# OpenAI's CLIP BPE merges, for the reproduction's real CLIP tokenizer: the file ships inside the
# open_clip_torch wheel, fetched without its dependencies (nothing else is installed).
CLIP_BPE := .cache/clip/bpe_simple_vocab_16e6.txt.gz
$(CLIP_BPE): | install
	mkdir -p .cache/wheels $(dir $(CLIP_BPE))
	$(PY) -m pip download -q --no-deps -d .cache/wheels open_clip_torch==3.3.0
	$(PY) -c "import glob, zipfile; wheel = zipfile.ZipFile(glob.glob('.cache/wheels/open_clip_torch-3.3.0-*.whl')[0]); open('$(CLIP_BPE)', 'wb').write(wheel.read('open_clip/bpe_simple_vocab_16e6.txt.gz'))"

# The Moving Digits miniature reproduction (35 minutes on 2 cores in its latest run alone): docs/reproduction.md.
reproduce: install $(CLIP_BPE)
	$(PY) -m jobs.reproduce --config configs/moving_digits.yaml

# CI's budget is 25 minutes: the slowest tests are listed at the end.
test: install browser
	$(PY) -m pytest -m "not slow and not gpu" --durations=15 $(PYTEST_ARGS)

# The fast loop: no Ray, Serve or other servers (1-2 minutes).
test-unit: install
	$(PY) -m pytest -m "not slow and not gpu and not integration" $(PYTEST_ARGS)

# The unit tier in a random order: pytest-randomly prints each run's seed; replay an order with
# `make test-random PYTEST_ARGS=--randomly-seed=N`.
test-random: install
	$(PY) -m pytest -m "not slow and not gpu and not integration" -p randomly $(PYTEST_ARGS)

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
