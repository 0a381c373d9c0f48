# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a building block.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# One cache for make and the stack (MODERATION_STACK__CACHE_DIR is the settings' name for it).
CACHE_DIR ?= $(or $(MODERATION_STACK__CACHE_DIR),$(HOME)/.cache/moderation)
export MODERATION_STACK__CACHE_DIR := $(CACHE_DIR)
UV_VERSION := 0.13.8
UV := $(CACHE_DIR)/tools/uv-$(UV_VERSION)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help venv check lint typecheck unit test demo bench nightly stack-up stack-down stack-status clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(UV):
	@scripts/timed "uv $(UV_VERSION): install into $(CACHE_DIR)/tools" \
	  scripts/install-uv "$(UV_VERSION)" "$(CACHE_DIR)/tools/uv-$(UV_VERSION)"

venv: $(UV) ## create .venv from uv.lock (no vLLM: it is a deployment-only extra)
	@scripts/timed "python venv: uv sync --locked" $(UV) sync --locked --quiet

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv ## unit tests only (no external service)
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

check: lint typecheck unit ## ruff + mypy (strict) + unit tests

stack-up: venv ## install (cached) and start Kafka, PostgreSQL, Dapr and the LLM server
	$(BIN)/moderation stack up
	$(BIN)/moderation schedule-nightly

stack-down: venv ## stop every component of the local stack
	$(BIN)/moderation stack down

stack-status: venv ## health, pid and RSS of every component
	$(BIN)/moderation stack status

test: venv ## the whole suite against the real local stack (brought up and down here)
	@started=$$(date +%s); status=0; \
	$(BIN)/moderation stack up || status=$$?; \
	echo "stack ready after $$(( $$(date +%s) - started ))s"; \
	if [ $$status -eq 0 ]; then $(BIN)/pytest $(PYTEST_ARGS) || status=$$?; fi; \
	$(BIN)/moderation stack down || true; \
	echo "make test finished in $$(( $$(date +%s) - started ))s (exit $$status)"; \
	exit $$status

demo: venv ## embedded mode: verdict table, then API + dashboard until Ctrl-C (at a terminal)
	$(BIN)/moderation demo

nightly: venv ## one nightly run (aggregate, retrain, evaluate, promote) on the stack's database
	$(BIN)/moderation nightly

bench: venv ## throughput and latency against the local stack (JSON in bench-results/)
	$(BIN)/moderation bench

clean: ## stop the stack and remove its state (.stack/); caches in $(CACHE_DIR) stay
	-$(BIN)/moderation stack down
	rm -rf .stack
