# gridcharge — one entry point for people and CI. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
UV := $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
PYTEST_ARGS ?=
export PATH := $(CURDIR)/.venv/bin:$(PATH)
# `make bench-control`: the code the control-quality bench compares with (a checkout with its own .venv, or a
# git ref installed in a temporary worktree)
CONTROL_BASELINE ?=
CONTROL_BASELINE_REF ?= 28abc91
CONTROL_ARGS = $(if $(CONTROL_BASELINE),--baseline $(CONTROL_BASELINE),--baseline-ref $(CONTROL_BASELINE_REF))

.PHONY: help install proto proto-check docs-topics lint test test-unit kafka redis infra-down demo up down bench bench-control

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

.venv/.installed: pyproject.toml uv.lock services/*/pyproject.toml
	@command -v uv >/dev/null 2>&1 || test -x "$(UV)" || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
	$$(command -v uv || echo "$(UV)") sync --frozen
	@touch $@

install: .venv/.installed  ## create .venv with every service and dev tool (uv, one lock file)

proto: install  ## regenerate Python contracts from proto/
	$(PY) proto/generate.py

proto-check: install  ## fail if generated contract code is stale
	$(PY) proto/generate.py --check

docs-topics: install  ## regenerate docs/topics.md from the topic registry
	$(PY) -m gridcharge.shared.docs > docs/topics.md

lint: install proto-check  ## ruff, mypy, contracts, topic docs, deployment checks (deploy/scripts: helm, promtool, schemas)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy services tests deploy/scripts
	$(PY) -m gridcharge.shared.docs --check docs/topics.md
	@if [ -f deploy/scripts/check-deploy.sh ]; then bash deploy/scripts/check-deploy.sh; fi

kafka:  ## start Apache Kafka (KRaft, single node, from Maven Central) on 127.0.0.1:9092
	bash deploy/scripts/kafka.sh start

redis:  ## start Debian's redis-server on 127.0.0.1:6379
	bash deploy/scripts/redis.sh start

infra-down:  ## stop Kafka and Redis
	bash deploy/scripts/kafka.sh stop || true
	bash deploy/scripts/redis.sh stop || true

test-unit: install  ## fast tests only (no Kafka, no Redis)
	$(PY) -m pytest -q -m "not kafka and not redis and not e2e" $(PYTEST_ARGS)

test: install  ## the whole suite on real Kafka + Redis (started here if down — a broker started here starts empty — and then stopped again)
	@set -o pipefail; status=0; \
	kafka_up=0; bash deploy/scripts/kafka.sh status >/dev/null 2>&1 && kafka_up=1; \
	redis_up=0; bash deploy/scripts/redis.sh status >/dev/null 2>&1 && redis_up=1; \
	fresh=; [ $$kafka_up -eq 1 ] || fresh=--fresh; \
	{ bash deploy/scripts/kafka.sh start $$fresh && bash deploy/scripts/redis.sh start; } || status=$$?; \
	if [ $$status -eq 0 ]; then $(PY) proto/generate.py --check && \
	  $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) || status=$$?; fi; \
	[ $$kafka_up -eq 1 ] || bash deploy/scripts/kafka.sh stop || true; \
	[ $$redis_up -eq 1 ] || bash deploy/scripts/redis.sh stop || true; \
	exit $$status

demo: install  ## the embedded cluster with simulated stations over a simulated day (no Kafka/Redis)
	.venv/bin/gridcharge demo

up: install kafka redis  ## the same scenario on the distributed cluster (each service its own process)
	bash deploy/scripts/up.sh

down:  ## stop what `make up` started
	bash deploy/scripts/up.sh stop || true

bench: install  ## all benchmarks; figures go to docs/benchmarks.md
	.venv/bin/gridcharge bench allocator --record
	.venv/bin/gridcharge bench forecast --record
	.venv/bin/gridcharge bench gateway --record
	$(MAKE) kafka redis
	.venv/bin/gridcharge bench e2e --record
	$(MAKE) bench-control

bench-control: install  ## control quality side by side with CONTROL_BASELINE (dir) or CONTROL_BASELINE_REF (git ref)
	.venv/bin/gridcharge bench control $(CONTROL_ARGS) --record
