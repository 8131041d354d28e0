# Each target bootstraps .venv on first use: a fresh clone needs only Python 3.11+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Tests marked slow (over ~10 s: the soak, the demo's full run) run only in CI
# (CI=true), or when asked for: `pytest -m slow`.
SLOW := $(if $(filter true,$(CI)),,-m "not slow")

.PHONY: demo test test-fast stress-suite lint typecheck pytest pytest-httpx2 docs docs-serve package bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,otel,fastapi,litestar,demo]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/seawall demo

test: $(STAMP) lint typecheck pytest docs package

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples scripts
	$(VENV)/bin/ruff format --check src tests bench examples scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict src/seawall tests/typing

pytest: $(STAMP)
	$(PY) -m pytest -q $(SLOW)
	$(MAKE) --no-print-directory pytest-httpx2

# The client and engine suites again, on httpx2 (seawall.httpx2's classes):
# scripts/pytest_httpx2.py aliases httpx to httpx2 before anything imports it.
pytest-httpx2: $(STAMP)
	$(PY) scripts/pytest_httpx2.py -q $(SLOW) tests/client tests/engine \
		--ignore=tests/client/test_client_httpx2.py

# The inner loop: the tests without the slow ones, nothing else.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The suite, three times, beside a CPU hog per core: finds timing-dependent tests.
stress-suite: $(STAMP)
	scripts/stress_suite.sh

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir .site

# The built wheel, installed alone in a fresh virtualenv: what users get.
package: $(STAMP)
	rm -rf .pkgcheck
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir .pkgcheck/dist .
	$(PYTHON) -m venv .pkgcheck/venv
	.pkgcheck/venv/bin/python -m pip install --quiet .pkgcheck/dist/*.whl
	cd .pkgcheck && venv/bin/python ../scripts/check_installed.py
	rm -rf .pkgcheck

docs-serve: $(STAMP)
	$(VENV)/bin/mkdocs serve

bench: $(STAMP)
	$(PY) bench/primitives.py

clean:
	rm -rf $(VENV) .site .mypy_cache .ruff_cache .pkgcheck
