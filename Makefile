# embedrail — the two commands: `make demo` and `make test`.
# Everything below sets itself up: the virtualenv, the Python packages, and the test servers.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
CACHE ?= $(HOME)/.cache/embedrail
PYTEST_ARGS ?=

.PHONY: demo test test-fast servers servers-down lint bench bench-peers venv clean

venv: $(STAMP)

# Bytecode is compiled at install: where PYTHONDONTWRITEBYTECODE=1 is set, an uncompiled torch +
# transformers would be recompiled by every new process (~5 s per CLI run or Airflow task).
$(STAMP): pyproject.toml requirements-dev.lock Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(VENV)/bin/pip install --quiet "uv>=0.4"
	VIRTUAL_ENV=$(abspath $(VENV)) $(UV) pip install --quiet --compile-bytecode -r requirements-dev.lock
	VIRTUAL_ENV=$(abspath $(VENV)) $(UV) pip install --quiet --compile-bytecode --no-deps -e .
	$(PY) -m compileall -q -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') > /dev/null || true  # some wheels ship templates that are not Python
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# Starts Elasticsearch, Weaviate and a Chroma server on 127.0.0.1 (unless EMBEDRAIL_*_URL point at
# servers already), runs the whole suite, and stops what it started — also when tests fail.
test: $(STAMP)
	$(PY) scripts/servers.py run -- $(PY) -m pytest $(PYTEST_ARGS)

# The quick loop while developing: no server is started; the in-memory store, embedded Chroma and Qdrant,
# and the unit tests (tests needing a server, or marked slow, are deselected). `make test` runs everything.
test-fast: $(STAMP)
	EMBEDRAIL_TEST_FAST=1 $(PY) -m pytest -q $(PYTEST_ARGS)

servers: $(STAMP)
	$(PY) scripts/servers.py up

servers-down:
	@test -x $(PY) && $(PY) scripts/servers.py down || python3 scripts/servers.py down

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/embed_throughput.py

# LangChain index() and LlamaIndex IngestionPipeline side by side with embedrail (benchmarks/peers.py).
# Their packages go into a separate virtualenv (the `bench` extra, pinned to the same lock where they
# overlap), never into the test one.
BENCH_VENV ?= .venv-bench
bench-peers: $(STAMP)
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	VIRTUAL_ENV=$(abspath $(BENCH_VENV)) $(UV) pip install --quiet --compile-bytecode -c requirements-dev.lock -e ".[bench]"
	$(BENCH_VENV)/bin/python benchmarks/peers.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .embedrail .servers .servers.env
