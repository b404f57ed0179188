# The two commands a newcomer needs: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv test lint serve clean deploy-tools test-deploy browser-tools

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: on this machine 2.13.0 resolves to the local CPU wheel instead of the CUDA build
	$(BIN)/pip install --quiet torch==2.13.0

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test,train,bench]"
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

serve: venv
	$(BIN)/tnn serve

# The tools tests/deploy drives (buildah, debootstrap, prometheus, docker-compose, hadolint); root for apt-get
deploy-tools: venv
	scripts/install-deploy-tools.sh $(BIN)/pip

# Debian's chromium for the playground's browser tests (playwright drives it; no browser download); root for apt-get
browser-tools:
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
	chromium --version

# Only the deploy tests: image build and run, compose, Prometheus scrape, dashboard
test-deploy: venv
	$(BIN)/pytest -m deploy tests/deploy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
