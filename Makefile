# genprov: every target creates .venv on first use (torch CPU wheel first, then the package).
# GPU users: make TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128" demo
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev,serve,lmdb
STAMP := $(VENV)/.genprov-installed
OUT ?= demo-report
PYTEST_WORKERS ?= 2

.PHONY: demo test lint typecheck imports unit e2e chromium reproduce bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/genprov demo --out $(OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

imports: $(STAMP)
	$(VENV)/bin/lint-imports

unit: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow and not e2e" -n $(PYTEST_WORKERS) --durations=15

# The browser test needs Debian's chromium; install it when missing (as root, or with passwordless sudo). If it
# cannot be installed the test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1); \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo apt-get install -y -q chromium >/dev/null 2>&1 || (sudo apt-get update -q >/dev/null 2>&1 && sudo apt-get install -y -q chromium >/dev/null 2>&1); fi; \
	  command -v chromium >/dev/null 2>&1 || echo "chromium could not be installed: the e2e browser test will skip"; }

e2e: $(STAMP) chromium
	$(VENV)/bin/pytest -q -m e2e -p no:cacheprovider -rs

test: lint typecheck imports unit e2e

# pytest exits 5 when no test is marked slow yet; that is not a failure here.
reproduce: $(STAMP)
	$(VENV)/bin/pytest -q -m slow -p no:cacheprovider || [ $$? -eq 5 ]

# The peers the benchmarks compare against, without their dependencies (traker's and dattri's would pull
# torchvision, which breaks diffusers beside CPU torch; neither needs it for what the benchmarks call).
bench: $(STAMP)
	$(VENV)/bin/pip install -q --no-deps traker dattri
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) demo-report .pytest_cache .mypy_cache .ruff_cache
