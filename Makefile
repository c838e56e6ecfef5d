# Developer and CI entry points. `make demo` runs the product end to end on this
# machine; `make test` runs lint and the whole test suite from a bare checkout.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

VENV ?= .venv
VENV_BIN := $(abspath $(VENV))/bin
PY := $(VENV_BIN)/python
# The stamp holds the hash of pyproject.toml that was installed: a changed file
# reinstalls, an unchanged one costs nothing.
STAMP := $(VENV)/.onprem-install-stamp
PYTEST_ARGS ?=

.PHONY: help venv install system-deps lint test demo clean distclean

help:
	@echo "make demo         run a relay, an agent and a sample service; call it through the tunnel"
	@echo "make test         system-deps + install, then lint and pytest (PYTEST_ARGS=... passed on)"
	@echo "make install      create $(VENV) (Python 3.11+) and pip install -e '.[dev]' (alias: venv)"
	@echo "make system-deps  apt-get install what is missing of openssh-client iproute2 procps"
	@echo "                  curl nginx tinyproxy systemd chromium (the tests start their own)"
	@echo "make lint         ruff check, ruff format --check, mypy"
	@echo "make clean        remove caches, build output and .demo/ (distclean: also $(VENV))"

venv: install

install:
	@want=$$(sha256sum pyproject.toml | cut -d' ' -f1); \
	if [ -x "$(PY)" ] && [ -f "$(STAMP)" ] && [ "$$(cat "$(STAMP)")" = "$$want" ]; then \
	    echo "install: $(VENV) is up to date"; exit 0; \
	fi; \
	if [ ! -x "$(PY)" ]; then \
	    python=""; \
	    for cand in python3.11 python3; do \
	        if command -v "$$cand" >/dev/null 2>&1 && \
	           "$$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
	            python=$$cand; break; \
	        fi; \
	    done; \
	    if [ -z "$$python" ]; then \
	        echo "install: ERROR: need python3.11 or a python3 >= 3.11 on PATH" >&2; exit 1; \
	    fi; \
	    echo "install: creating $(VENV) with $$(command -v $$python)"; \
	    rm -rf "$(VENV)"; \
	    "$$python" -m venv "$(VENV)"; \
	    "$(PY)" -m pip install --quiet --disable-pip-version-check --upgrade pip; \
	fi; \
	echo "install: pip install -e '.[dev]' (log: $(VENV)/pip-install.log)"; \
	if ! "$(PY)" -m pip install --disable-pip-version-check -e ".[dev]" \
	        > "$(VENV)/pip-install.log" 2>&1; then \
	    tail -n 40 "$(VENV)/pip-install.log" >&2; \
	    echo "install: ERROR: pip install failed (full log: $(VENV)/pip-install.log)" >&2; \
	    exit 1; \
	fi; \
	echo "$$want" > "$(STAMP)"

system-deps:
	@bash scripts/system-deps.sh

lint: install
	$(VENV_BIN)/ruff check .
	$(VENV_BIN)/ruff format --check .
	$(VENV_BIN)/mypy

# Lint runs first and its failure stops the run, as it would in review.
test: system-deps install
	@$(MAKE) --no-print-directory lint
	PATH="$(VENV_BIN):$$PATH" $(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

demo: install
	PATH="$(VENV_BIN):$$PATH" bash scripts/demo.sh

clean:
	rm -rf .demo build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# -- benchmarks (bench/, design section 8) -----------------------------------------
# bench/deps.sh installs nginx, wrk and OpenSSH from Debian if missing, and matplotlib.
AGENTS ?= 1000
BENCH_ARGS ?=

.PHONY: bench bench-smoke bench-scale

bench: install
	@bash bench/deps.sh $(PY)
	$(PY) -m bench.run $(BENCH_ARGS)

bench-smoke: install
	@bash bench/deps.sh $(PY)
	$(PY) -m bench.run --smoke $(BENCH_ARGS)

bench-scale: install
	@bash bench/deps.sh $(PY)
	ulimit -n 65536 2>/dev/null || ulimit -n "$$(ulimit -Hn)"; \
	$(PY) -m bench.scale_agents --agents $(AGENTS) $(BENCH_ARGS)
