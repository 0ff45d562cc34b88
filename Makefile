# Fleet: developer entry points. `make` (or `make help`) lists the targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Number of jobs for `make bench`; extra arguments for fleet-bench go in BENCH_ARGS.
N ?= 5000
BENCH_ARGS ?=
# Extra arguments for fleet-chaos (e.g. --kill-every-ms 1000 --seed 42).
CHAOS_ARGS ?=
# The benchmarks run the built binaries directly, not through `cargo run`: cargo sets
# LD_LIBRARY_PATH to its target and toolchain directories, and every process started
# under it (the services, the jobs' commands, the spawn baseline) then searches them for
# its shared libraries: about 200 us more per spawn, 25 % fewer in the baseline.
BIN ?= $(or $(CARGO_TARGET_DIR),target)/release
# After building, the benchmarks `sync` before they measure: a release build leaves
# gigabytes for the kernel to write back, and PostgreSQL's and RabbitMQ's fsyncs would
# queue behind them during the run.

.PHONY: help demo test test-tls lint fmt openapi bench bench-latency bench-balance chaos services status stop-services compose-check ci

help: ## List the targets
	@echo "Fleet make targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-15s %s\n", $$1, $$2 }'
	@echo "Variables: N=$(N) (bench jobs), BENCH_ARGS='$(BENCH_ARGS)', CARGO=$(CARGO)"

demo: ## Build and run a local fleet (3 executors) and a demo job (infra/demo.sh)
	infra/demo.sh

test: ## Start RabbitMQ/PostgreSQL with development TLS, cargo test --workspace --all-targets, then test-tls
	infra/services.sh up
	infra/tls.sh local
	$(CARGO) test --workspace --all-targets
	$(MAKE) --no-print-directory test-tls

test-tls: ## The end-to-end tests again, with TLS on every hop (API, AMQPS, PostgreSQL, management)
	infra/tls.sh local
	FLEET_TEST_TLS_DIR=$(CURDIR)/infra/dev-tls $(CARGO) test -p fleet-tests --test end_to_end --test tls_everywhere

lint: ## cargo fmt --check and cargo clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code (cargo fmt --all)
	$(CARGO) fmt --all

openapi: ## Regenerate docs/openapi.json from the submitter's routes and fleet-core's types
	$(CARGO) run --quiet -p fleet-submitter -- --print-openapi > docs/openapi.json.tmp
	mv docs/openapi.json.tmp docs/openapi.json

bench: ## Throughput and CPU/commits/messages per job, N jobs, against a spawn baseline (BENCH_ARGS=...)
	infra/services.sh up
	$(CARGO) build --release -p fleet-tests --bins
	sync
	$(BIN)/fleet-bench throughput --jobs $(N) $(BENCH_ARGS)

bench-latency: ## One job in flight, 500 jobs: submit -> start and submit -> recorded, p50 and p99
	infra/services.sh up
	$(CARGO) build --release -p fleet-tests --bins
	sync
	$(BIN)/fleet-bench latency $(BENCH_ARGS)

bench-balance: ## 150 sleep jobs of mixed lengths at once on 3 x 2 slots: makespan against the ideal
	infra/services.sh up
	$(CARGO) build --release -p fleet-tests --bins
	sync
	$(BIN)/fleet-bench balance $(BENCH_ARGS)

chaos: ## Soak: N jobs while random service processes are SIGKILLed, SIGTERMed or SIGSTOPped (CHAOS_ARGS=...)
	infra/services.sh up
	$(CARGO) build --release -p fleet-tests --bins
	$(BIN)/fleet-chaos --jobs $(N) $(CHAOS_ARGS)

services: ## Install/start RabbitMQ and PostgreSQL and create the database (idempotent)
	infra/services.sh up

status: ## Report whether RabbitMQ and PostgreSQL are ready
	infra/services.sh status

stop-services: ## Stop RabbitMQ and PostgreSQL (to test start-up from stopped services)
	infra/stop-services.sh all

compose-check: ## Validate docker-compose.yml (with and without the monitoring profile) and TLS on every hop
	tmp=$$(mktemp -d) && FLEET_TLS_DIR="$$tmp/tls" infra/compose-env.sh "$$tmp/env" 2>/dev/null \
	  && set -a && . "$$tmp/env" && set +a \
	  && docker-compose config -q && docker-compose --profile monitoring config -q \
	  && docker-compose --profile monitoring config | infra/compose-tls-check.sh; \
	  rc=$$?; rm -rf "$$tmp"; exit $$rc
	python3 -m json.tool infra/grafana/fleet-dashboard.json > /dev/null

ci: ## What CI runs: .ci/run (install what is missing, services, lint, test)
	.ci/run
