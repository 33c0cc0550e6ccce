# kfloop: `make demo` runs the loop on the local stack; `make test` is what CI runs.
# Both start from nothing: they run `setup` first, which is quick when all is in place.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
export UV_PYTHON_DOWNLOADS := never
# Hardlink the environments to uv's cache: the two of them share most packages, and copies
# took 4.2 GB beside the cache's 3.9 GB (a CI run once ran out of disk installing the second).
# Where the cache is on another filesystem uv copies instead, with a warning.
export UV_LINK_MODE := hardlink
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
PIPE := .venv/bin
SERV := .venv-serving/bin
PYTEST_ARGS ?=

.PHONY: help setup uv envs system-packages test test-pipeline test-serving lint demo bench compile lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

uv:
	@if ! command -v uv >/dev/null 2>&1 && ! $(PYTHON) -m uv --version >/dev/null 2>&1; then \
		echo "setup: installing uv with pip"; \
		$(PYTHON) -m pip install --quiet "uv>=0.5"; \
	fi

envs: uv
	@echo "setup: .venv (pipeline extra) from uv.lock"
	$(UV) sync --frozen --extra pipeline --quiet
	@echo "setup: .venv-serving (serving extra) from uv.lock"
	UV_PROJECT_ENVIRONMENT=.venv-serving $(UV) sync --frozen --extra serving --group serving-dev --quiet

system-packages:
	@missing=""; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null 2>&1 || missing="$$missing prometheus-alertmanager"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "setup: installing Debian packages:$$missing"; \
			apt-get update -qq; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else \
			echo "setup: missing$$missing; install with: sudo apt-get install$$missing" >&2; \
			echo "setup: (needed by the alerting parts of the local stack; the rest works without)" >&2; \
		fi; \
	fi

setup: envs system-packages ## install uv, both environments and Debian's prometheus + alertmanager
	@echo "setup: done"

lint: setup ## ruff (lint + format check) and mypy on src/kfloop
	$(PIPE)/ruff check src tests components pipelines
	$(PIPE)/ruff format --check src tests components pipelines
	$(PIPE)/mypy src/kfloop

test-pipeline: setup
	$(PIPE)/python -m pytest tests $(PYTEST_ARGS)

test-serving: setup
	$(SERV)/python -m pytest tests $(PYTEST_ARGS)

test: lint test-pipeline test-serving ## lint, then every test in both environments

demo: setup ## the whole loop on the embedded local stack
	$(PIPE)/kfloop demo

bench: setup ## benchmarks under tests/benchmarks (ratios against baselines in the same run)
	@set -e; for b in tests/benchmarks/bench_*.py; do \
		case "$$b" in *bench_serving*|*bench_logging*) py=$(SERV)/python;; *) py=$(PIPE)/python;; esac; \
		echo "== $$b ($$py)"; $$py $$b; \
	done

compile: setup ## compile the pipelines to pipelines/compiled/*.yaml
	@if ls pipelines/*.py >/dev/null 2>&1; then \
		$(PIPE)/python -m kfloop.pipelines.compile; \
	else \
		echo "compile: no pipelines yet (pipelines/ arrives with the model engineering issue)"; \
	fi

lock: uv ## re-resolve uv.lock after changing pyproject.toml
	$(UV) lock

clean: ## remove both environments and the local stack's state
	-$(PIPE)/kfloop stack down
	rm -rf .venv .venv-serving .kfloop
