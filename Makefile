# The README's commands: `make demo` (score an hour on Azurite), `make ui` (the dev stack: PostgreSQL + Airflow) and `make test`;
# while developing, `make check` (lint, format, types) and `make test-fast` (unit and DAG tests, under two minutes).
# Everything else is what they need: a virtualenv with the lock and the dev tools, and Azurite from npm.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
AZURITE_DIR := dev/node

.PHONY: demo test test-fast check install browser-deps postgres-deps ui lock scorer-requirements bench bench-hour clean

# One line per step and a summary; Airflow's logs go to .airflow/demo.log. VERBOSE=1 leaves them on the terminal.
demo: install
	$(PY) -m dev.demo$(if $(VERBOSE), --verbose)

test: check install browser-deps postgres-deps
	SCORING_CHROMIUM=$(CHROMIUM) $(PY) -m pytest --durations=15

# Unit tests, the DAG's integrity and its parse-time rules: nothing that needs Azurite, dag.test, a scheduler, a
# browser or a fresh virtualenv (the markers of tests/), so it runs in under two minutes on 2 cores.
FAST_TESTS := tests/unit tests/dag
FAST_MARKERS := not azurite and not airflow and not standalone and not browser and not deploy
test-fast: install
	$(PY) -m pytest -q -m "$(FAST_MARKERS)" --durations=5 $(FAST_TESTS)

# Lint, formatting and types (config in pyproject.toml); each runs even when one before it failed.
CHECKED := src dev dags tests bench
check: install
	@status=0; \
	echo "ruff check"; $(PY) -m ruff check $(CHECKED) || status=1; \
	echo "ruff format --check"; $(PY) -m ruff format --check $(CHECKED) || status=1; \
	echo "mypy"; $(PY) -m mypy || status=1; \
	exit $$status

# The browser test drives Debian's own Chromium with Playwright's Python package: never a Playwright browser
# download. Installed once through apt (needs root, as on CI and the build machines).
CHROMIUM ?= /usr/bin/chromium
browser-deps:
	@test -x $(CHROMIUM) || { \
	  echo "$(CHROMIUM) missing: installing Debian's chromium with apt-get (needs root)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	} || { echo "could not install chromium: run 'apt-get install chromium' as root, or set CHROMIUM=/path"; exit 1; }

# Every Airflow the project starts outside containers (make ui, the tests with a scheduler) runs on a throwaway
# PostgreSQL cluster made with the server binaries of Debian's postgresql package (dev/postgres.py looks in
# $$SCORING_PG_BINDIR, /usr/lib/postgresql/*/bin, then PATH). Installed once through apt (needs root).
postgres-deps:
	@{ test -n "$$SCORING_PG_BINDIR" && test -x "$$SCORING_PG_BINDIR/initdb"; } || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  echo "PostgreSQL server binaries (initdb, postgres) missing: installing Debian's postgresql with apt-get (needs root)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; \
	} || { echo "could not install postgresql: run 'apt-get install postgresql' as root, or set SCORING_PG_BINDIR to a folder with initdb and postgres"; exit 1; }

# PostgreSQL + Airflow (scheduler, DAG processor, triggerer, API server), Azurite, a trained model and a simulator landing windows every minute.
ui: install postgres-deps
	$(PY) -m dev.devstack

install: $(VENV)/.installed $(AZURITE_DIR)/node_modules/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(AZURITE_DIR)/node_modules/.installed: $(AZURITE_DIR)/package.json $(AZURITE_DIR)/package-lock.json
	cd $(AZURITE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Re-resolve the lock from requirements.in in a scratch virtualenv (needs the package index).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip && .lock-venv/bin/pip install --quiet -r requirements.in
	.lock-venv/bin/pip freeze > requirements.lock.new && rm -rf .lock-venv
	@echo "review requirements.lock.new, keep the comments of requirements.txt, then replace it"
	@echo "and run make scorer-requirements"

# Re-derive requirements-scorer.txt (the scorer image's part of the lock) after the lock changed; make test fails
# until it matches.
scorer-requirements: install
	$(PY) dev/scorer_requirements.py

# Both benchmarks (~11 min on 2 cores); results in bench/results/, write-ups in docs/benchmarks.md.
bench: install
	$(PY) bench/bench_scoring.py
	$(PY) bench/bench_memory.py

# A whole hour (1k, 10k, 100k sensors) through the dev stack's scheduler, against the bare kernel (~25 min on 2
# cores); results in bench/results/hour.json, write-up in docs/benchmarks.md. The root on the path: dev/ is not installed.
bench-hour: install postgres-deps
	PYTHONPATH=.$(if $(PYTHONPATH),:$(PYTHONPATH)) $(PY) bench/bench_hour.py

clean:
	rm -rf .airflow .demo-output .pytest_cache .mypy_cache .ruff_cache
