# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint proto bench clean venv browser mosquitto nginx lorawan-encoder fuzz crash soak

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP) mosquitto
	$(BIN)/smartregion demo $(DEMO_ARGS)

# The gates (ruff, mypy) run first: a lint or type error fails the run like a test.
test: $(STAMP) browser mosquitto nginx lorawan-encoder lint
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

# The gates: ruff (rule set in pyproject.toml) and mypy (strict on the modules listed there).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
# Hardening runs (docs/limits.md): the same tests as in `make test`, with more inputs/kills.
fuzz: $(STAMP)
	FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest tests/test_fuzz.py -s -q $(PYTEST_ARGS)

crash: $(STAMP)
	CRASH_KILLS=25 $(BIN)/python -m pytest tests/test_crash_durability.py tests/test_crash_federation.py -s -q $(PYTEST_ARGS)

soak: $(STAMP)
	$(BIN)/python -m bench.soak --seconds $(or $(SOAK_SECONDS),60)

# The dashboard's end-to-end test drives Debian's chromium (installed as root, as in CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The reverse-proxy test runs deploy/nginx-dashboard.conf in Debian's nginx-light.
nginx:
	@test -x /usr/sbin/nginx || command -v nginx >/dev/null 2>&1 || { \
	  echo "installing Debian's nginx-light for the reverse-proxy test (deploy/nginx-dashboard.conf)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; }

# The network-door tests and the demo's LoRaWAN station use Debian's Mosquitto as the broker.
mosquitto:
	@test -x /usr/sbin/mosquitto || command -v mosquitto >/dev/null 2>&1 || { \
	  echo "installing Debian's mosquitto for the network-door tests and the demo"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; }

# LoRaWAN test frames come from an encoder that is not ours: npm's lora-packet, exactly as locked.
lorawan-encoder:
	@command -v npm >/dev/null 2>&1 || { \
	  echo "installing Debian's nodejs and npm for the LoRaWAN test encoder"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	npm ci --prefix tests/lorawan_encoder --ignore-scripts --no-audit --no-fund --loglevel=error

# Regenerate the Python code in node/api/ from proto/ (tests fail if it drifts).
proto: $(STAMP)
	$(BIN)/python -m node.api.codegen

bench: $(STAMP) mosquitto
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.query
	$(BIN)/python -m bench.networks

# Install the Node.js partner client's dependencies exactly as locked (docs/querying.md).
.PHONY: examples
examples:
	npm ci --prefix examples/node-partner --ignore-scripts --no-audit --no-fund --loglevel=error

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
