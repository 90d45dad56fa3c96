# amiflow. Two commands do all the set-up on a fresh machine with Rust and Python:
#   make demo   runs the main job (an AZ migration) on the local AWS stack
#   make test   runs every test
# Python tools go into .venv, Node tools into local/node_modules, both at pinned versions.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NODE_BIN := local/node_modules/.bin
export SAM_CLI_TELEMETRY := 0

.PHONY: demo demo-copy demo-fleet bench test local local-deps bins lint fmt-check clippy template-lint statemachines unit e2e peer-test build clean

$(VENV)/.installed: local/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r local/requirements.txt
	touch $@

local/node_modules/.installed: local/package.json local/package-lock.json
	cd local && npm ci --silent --no-audit --no-fund
	touch $@

local-deps: $(VENV)/.installed local/node_modules/.installed

# All targets, so that the binaries are built with the same features as the tests (the dev
# dependencies switch on test-util features in the SDK's runtime crates): one SDK build, not two.
bins:
	cargo build --workspace --all-targets

## The local AWS stack in the foreground on 127.0.0.1:$${AMIFLOW_LOCAL_PORT:-4566}.
local: local-deps bins
	cd local && ../$(PY) -m amiflow_local.server

demo: local-deps bins
	$(PY) local/demo.py

## Benchmarks (cold start of the release binaries, cost and reaction time on the local stack),
## written to docs/benchmarks.md. Not part of `make test`: the release build is long.
bench: local-deps bins
	cargo build --release --bins
	$(PY) bench/bench.py --out docs/benchmarks.md

## A cross-account copy (CopyImage) between two accounts of the local stack.
demo-copy: local-deps bins
	$(PY) local/demo_copy.py

## A zone evacuation (EvacuateZone) of a tier in three waves, previewed, then run.
demo-fleet: local-deps bins
	$(PY) local/demo_fleet.py

test: local-deps lint unit e2e

lint: fmt-check clippy template-lint

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

## The ASL files, written from statemachine/src (named retry and catch policies).
statemachines: local-deps
	$(PY) statemachine/build.py

template-lint: local-deps
	$(PY) statemachine/build.py --check
	$(VENV)/bin/cfn-lint template.yaml target-account.yaml guardrails/guardrails.yaml
	$(VENV)/bin/sam validate --lint --template template.yaml
	for f in statemachine/*.asl.json; do $(NODE_BIN)/asl-validator --json-path $$f || exit 1; done

unit: bins
	cargo test --workspace

## The end-to-end tests mostly wait (on AMI delays, retries, events), so they run in several
## pytest-xdist workers, each with a local stack of its own. On 2 cores, with 430 tests: 4 workers
## took 409 s and 6 took 354 s, both CPU-bound on the stacks (moto); with the stacks' tag lookup
## and client sessions made cheaper, 6 took 305 s.
PYTEST_WORKERS ?= 6
e2e: local-deps bins
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

## moto's own tests for EC2 images, volumes, instances and tags, KMS, EventBridge and Step
## Functions, run in-process with the fidelity layer installed; failures other than those
## local/peer-expected.txt explains fail the target. Not part of `make test`.
peer-test: local-deps
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r local/requirements-peer.txt
	$(PY) local/peer_test.py

## Deployable artefacts: sam build with cargo-lambda (release, arm64). Not part of `make test`.
build: local-deps
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r local/requirements-build.txt
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/sam build --template template.yaml

clean:
	rm -rf $(VENV) local/node_modules .aws-sam
