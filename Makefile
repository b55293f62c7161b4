# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint proto bench clean venv browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/smartregion demo $(DEMO_ARGS)

# `make test` will run `lint` first once the files other branches are rewriting are clean
# (see the integrator's note in the gates branch): test: $(STAMP) browser lint
test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The gates: ruff (rule set in pyproject.toml) and mypy (strict on the modules listed there).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The dashboard's end-to-end test drives Debian's chromium (installed as root, as in CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Regenerate the Python code in node/api/ from proto/ (tests fail if it drifts).
proto: $(STAMP)
	$(BIN)/python -m node.api.codegen

bench: $(STAMP)
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.query

# Install the Node.js partner client's dependencies exactly as locked (docs/querying.md).
.PHONY: examples
examples:
	npm ci --prefix examples/node-partner --ignore-scripts --no-audit --no-fund --loglevel=error

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
