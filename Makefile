# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test proto bench clean venv browser fuzz crash soak

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/smartregion demo $(DEMO_ARGS)

test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Hardening runs (docs/limits.md): the same tests as in `make test`, with more inputs/kills.
fuzz: $(STAMP)
	FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest tests/test_fuzz.py -s -q $(PYTEST_ARGS)

crash: $(STAMP)
	CRASH_KILLS=25 $(BIN)/python -m pytest tests/test_crash_durability.py -s -q $(PYTEST_ARGS)

soak: $(STAMP)
	$(BIN)/python -m bench.soak --seconds $(or $(SOAK_SECONDS),60)

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
