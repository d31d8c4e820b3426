# `make test` and `make demo` set everything up themselves: a .venv with pinned dependencies.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedclip-installed

.PHONY: test test-slow demo generator-study lint bench flwr-config clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP) lint
	$(PY) -m pytest -q -m "not slow"

# end-to-end audits and the real TLS deployment (CI runs them after `make test`)
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# the quickstart study: synthetic vs real, DP federated fine-tuning, every audit, one report (runs/quickstart)
demo: $(STAMP)
	$(VENV)/bin/fedclip experiment run quickstart --out runs/quickstart

# the memorization study: does the learned generator copy its patients? (runs/generator, ~30 min on 2 cores)
generator-study: $(STAMP)
	$(VENV)/bin/fedclip experiment run generator --out runs/generator

# pyproject's [tool.flwr.app.config] from FederateConfig's defaults (a test checks they agree)
flwr-config: $(STAMP)
	$(PY) scripts/flwr_app_config.py

bench: $(STAMP)
	$(PY) benchmarks/synth_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
