# trackd — the two commands a newcomer needs are `make demo` and `make test`.
# Everything runs inside .venv, created here from $(PYTHON) (Python >= 3.11 with the venv module).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# How many kill -9 / torture iterations the slow tests run: CI scale by default, full with test-full.
TRACKD_SLOW_SCALE ?= ci

.PHONY: help venv install demo test test-full lint typecheck pytest compiled test-compiled bench faults clean install-service uninstall-service

help:
	@echo "make demo       install into .venv and run trackd on the bundled sample logs"
	@echo "make test       install with test extras and run lint, type checks and the whole suite"
	@echo "make test-full  the same, with the slow tests at their full iteration counts"
	@echo "make compiled   build the mypyc-compiled hot modules and the native kernel in build/compiled"
	@echo "                (a copy of the tree)"
	@echo "make test-compiled  the byte-identity check of the native kernel and the compiled copy"
	@echo "                against the pure path, and the pipeline, parse and identity tests on that"
	@echo "                copy (part of make test; pure Python when it cannot compile)"
	@echo "make bench      run the benchmarks in bench/ (prints tables, writes bench/results/*.json);"
	@echo "                make bench QUICK=1 runs them on small corpora (a minute or two)"
	@echo "make faults     the fault matrix: each fault with lines in, messages out, duplicates, losses"
	@echo "                (make faults QUICK=1: the short version, under a minute on a quiet machine)"
	@echo "make clean      remove .venv and demo state"
	@echo "sudo make install-service    install trackd as a systemd service (systemd/install.sh;"
	@echo "                             ARGS='--dry-run' prints every step and changes nothing)"
	@echo "sudo make uninstall-service  stop and remove it; keeps config and state (ARGS=--purge: not)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null || { \
	  echo "error: trackd needs Python >= 3.11; '$(PYTHON)' is missing or older." >&2; \
	  echo "       Run 'make PYTHON=/path/to/python3.11' (or newer)." >&2; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "error: '$(PYTHON)' has no working venv/ensurepip module." >&2; \
	  echo "       On Debian/Ubuntu: sudo apt-get install python3-venv  (or python3.X-venv for your version)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python

$(STAMP): $(BIN)/python pyproject.toml
	@echo "installing trackd and its test tools into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/pip install -e '.[test]' > $(VENV)/install.log 2>&1 || { \
	  cat $(VENV)/install.log >&2; echo "error: pip install failed (full log above)" >&2; exit 1; }
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@rm -rf .demo-state
	@echo "== trackd run --once -c config/demo.yaml   (messages on stdout; logs and summary on stderr)" >&2
	@$(BIN)/trackd run --once -c config/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check agent tests bench setup.py
	$(BIN)/ruff format --check agent tests bench setup.py

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	@# pytest exits 5 when it collects no tests; make treats any non-zero exit as a failure.
	TRACKD_SLOW_SCALE=$(TRACKD_SLOW_SCALE) $(BIN)/python -m pytest -p no:cacheprovider

# The compiled build (setup.py, agent/native.py) in a copy of the tree, so that its extensions
# never hide the .py files you edit here. Without a C compiler it stays pure Python and says so;
# TRACKD_REQUIRE_COMPILED=1 (CI) makes that an error.
COMPILED := build/compiled
compiled: $(STAMP)
	@rm -rf $(COMPILED) && mkdir -p $(COMPILED)
	@cp -R agent bench config tests setup.py pyproject.toml README.md $(COMPILED)/
	@find $(COMPILED) -name __pycache__ -prune -exec rm -rf {} +
	@find $(COMPILED) -name '*.so' -delete
	@echo "compiling the hot modules with mypyc into $(COMPILED) (log: $(COMPILED)/build.log)"
	@cd $(COMPILED) && ../../$(BIN)/python setup.py build_ext --inplace > build.log 2>&1 || { \
	  cat build.log >&2; echo "error: the compiled build failed (full log above)" >&2; exit 1; }
	@grep '^trackd build:' $(COMPILED)/build.log
	@cd $(COMPILED) && ../../$(BIN)/python -c 'import os, sys; from agent import native; \
	  print("build/compiled runs:", native.describe()); \
	  ok = native.is_compiled() and native.kernel() == "native block kernel"; \
	  sys.exit(1 if os.environ.get("TRACKD_REQUIRE_COMPILED") and not ok else 0)'

# Byte-identity against the pure path (TRACKD_KERNEL=0: no native kernel, no compiled module) of
# the native kernel here and of the compiled copy with its kernel, then the tests of the modules
# it compiles, run against the compiled copy.
test-compiled: compiled
	@rm -rf $(COMPILED)/.ref
	TRACKD_KERNEL=0 $(BIN)/python bench/equivalence.py --lines 50000 --record $(COMPILED)/.ref
	$(BIN)/python bench/equivalence.py --lines 50000 --check $(COMPILED)/.ref --workers 0
	cd $(COMPILED) && PYTHONPATH=$$(pwd) ../../$(BIN)/python bench/equivalence.py --lines 50000 \
	  --check .ref --workers 0,2
	cd $(COMPILED) && PYTHONPATH=$$(pwd) TRACKD_SLOW_SCALE=$(TRACKD_SLOW_SCALE) ../../$(BIN)/python \
	  -m pytest -p no:cacheprovider -q tests/pipeline tests/identity tests/parse tests/test_run_once.py tests/test_native.py

test: lint typecheck pytest test-compiled

test-full:
	$(MAKE) test TRACKD_SLOW_SCALE=full

bench: $(STAMP)
	$(BIN)/python bench/parse.py $(if $(QUICK),--lines 20000 --repeat 1)
	$(BIN)/python bench/run_once.py $(if $(QUICK),--quick)
	$(BIN)/python bench/scale.py $(if $(QUICK),--quick)
	$(BIN)/python bench/backfill.py $(if $(QUICK),--lines 200000)
	$(BIN)/python bench/deliver.py --skip-without-nginx --sink kissmetrics --max-events 500 \
	  --messages $(if $(QUICK),5000,20000)
	$(BIN)/python bench/deliver.py --skip-without-nginx --sink segment $(if $(QUICK),--messages 50000)
	$(BIN)/python bench/identity.py --visitors $(if $(QUICK),20000,1000000)
	$(BIN)/python bench/summary.py

faults: $(STAMP)
	$(BIN)/python bench/faults.py $(if $(QUICK),--quick)

# The service install uses the system's Python (not .venv): /opt/trackd is built from it.
install-service:
	bash systemd/install.sh $(ARGS)

uninstall-service:
	bash systemd/install.sh --uninstall $(ARGS)

clean:
	rm -rf $(VENV) .demo-state .pytest_cache .mypy_cache .ruff_cache build *.egg-info
