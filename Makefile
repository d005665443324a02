# The two commands a newcomer needs: `make test` and `make demo`.
# Both set up everything on a fresh Debian machine (venv, Docker engine, sandbox image).
VENV ?= .venv
PY := $(VENV)/bin/python
AIRLOCK := $(VENV)/bin/airlock
STAMP := $(VENV)/.installed

.PHONY: setup venv docker image test-deps test test-unit test-local-model test-kubernetes lint demo bench clean

setup: venv docker image

venv: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev,openai,ssh,kubernetes]'
	touch $(STAMP)

docker:
	bash scripts/ensure-docker.sh

image: venv docker
	$(AIRLOCK) image build

test-deps:
	bash scripts/ensure-test-deps.sh

# The suite runs in TEST_WORKERS pytest-xdist workers (1: in this process alone), whole modules each: their
# module-scoped fixtures (a package index, a second engine) are made once. Each worker is its own test
# session with its own owner label, so the check that nothing is left behind stays exact. Measured on 2
# cores: 1 worker 17 min, 3 workers 7:13 in a fresh clone (8:31 to 9:49 before the CLI calls forked from a preloaded server), 4 workers 11 (the heavy tests then contend for the CPU).
TEST_WORKERS ?= 3
test: setup test-deps
	$(PY) -m pytest $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) tests

# The tests that need no Docker engine (nor anything else beyond the venv), with none reachable.
test-unit: venv
	DOCKER_HOST=unix:///nonexistent $(PY) -m pytest -n 2 tests/unit

# Not part of `make test`: airlock against a real self-hosted model. The first time it builds llama.cpp's
# llama-server (about 5 minutes on 2 cores) and fetches a 1.1 GB model into LOCAL_MODEL_CACHE; later runs reuse them.
LOCAL_MODEL_CACHE ?= .cache/local-model
test-local-model: setup
	bash scripts/ensure-local-model.sh $(LOCAL_MODEL_CACHE) $(VENV)/bin/pip
	AIRLOCK_LOCAL_MODEL_DIR=$(abspath $(LOCAL_MODEL_CACHE)) $(PY) -m pytest tests/docker/local_model --timeout 1800; \
	status=$$?; cat $(LOCAL_MODEL_CACHE)/last-run.txt 2>/dev/null; exit $$status

# The Kubernetes end-to-end tests against a real cluster: KUBECONFIG's, namespace AIRLOCK_TEST_NAMESPACE
# (default airlock-test), image AIRLOCK_TEST_IMAGE pushed to a registry the cluster pulls from. `make test`
# runs the same tests against a fake API server whose pods are local containers.
test-kubernetes: venv
	@test -n "$$KUBECONFIG" || { echo "make test-kubernetes: set KUBECONFIG to the cluster to test against (see the README, Beyond one machine)" >&2; exit 2; }
	AIRLOCK_TEST_KUBERNETES=real $(PY) -m pytest tests/kubernetes

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: setup
	$(AIRLOCK) demo

bench: setup
	$(PY) -m bench

clean:
	$(AIRLOCK) gc --all || true
	rm -rf $(VENV) build dist *.egg-info
