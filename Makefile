# The README's two commands: `make run` (start the app) and `make test` (run every test).
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: run test test-fast lint venv test-deps system-deps bench

$(VENV)/.runtime: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

venv: $(VENV)/.runtime

# Debian packages the tests need: headless Chromium (browser tests) and the Fashion-MNIST idx files.
system-deps:
	@if ! command -v chromium >/dev/null || [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium dataset-fashion-mnist; \
	fi

run: $(VENV)/.runtime
	$(PY) -m app.launch --server.port $(PORT)

lint: $(VENV)/.test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint system-deps
	$(PY) -m pytest

# The quick lane for your own loop: lint, then every test but the slow and the browser ones.
test-fast: lint
	$(PY) -m pytest -m "not slow and not e2e"

bench: $(VENV)/.runtime
	$(PY) -m bench
