# Both targets create and reuse .venv/ at the repo root, so they work on a fresh machine.
# `make run` installs the server only (the runtime dependencies); `make test` and the other
# targets add the dev tools (ruff, mypy, pytest, playwright...) on top, in the same venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench chaos dist clean

$(RUNTIME_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e .
	touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# ratewire-client (clients/js): its npm dependencies, for tsc and its node --test suites.
JS := clients/js
JS_STAMP := $(JS)/node_modules/.installed

$(JS_STAMP): $(JS)/package.json $(JS)/package-lock.json
	cd $(JS) && npm ci --no-audit --no-fund
	touch $(JS_STAMP)

run: $(RUNTIME_STAMP)
	$(BIN)/ratewire serve --dev

# pytest -n 4: the suite mostly waits on the server processes it starts, so more workers than
# cores keep both busy. On 2026-12-03 (a slow day here) four took 9:04-10:13 and three
# 9:16-10:15: the suite is now CPU-bound, and what would shorten it is less work per test.
# --dist loadfile keeps each module's shared servers (and any Debian package a module
# installs) in one worker. --durations=25: every run names the tests that cost the most time,
# so the suite's 15-minute budget is kept with figures, not guesses.
test: $(STAMP) $(JS_STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy
	cd $(JS) && npx tsc -p tsconfig.json --noEmit
	$(BIN)/python -m pytest -q -n 4 --dist loadfile --durations=25

lint: $(STAMP) $(JS_STAMP)
	$(BIN)/ruff check src tests bench examples && $(BIN)/ruff format --check src tests bench examples && $(BIN)/mypy
	cd $(JS) && npx tsc -p tsconfig.json --noEmit

# The sdist and the wheel in dist/ (pip install dist/ratewire-*.whl elsewhere).
dist: $(STAMP)
	$(BIN)/python -m build --outdir dist

bench: $(STAMP)
	$(BIN)/ratewire bench fanout

# Ten minutes of faults against a cluster of its own (PostgreSQL, a broker and haproxy on this
# machine), then the checker: make chaos SEED=7 CHAOS_SECONDS=120 replays another run, and
# make chaos BROKER=nats runs it on NATS JetStream instead of Redis Streams.
SEED ?= 2026
CHAOS_SECONDS ?= 600
BROKER ?= redis
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos --seconds $(CHAOS_SECONDS) --seed $(SEED) --wipe-every 12 --broker $(BROKER)

clean:
	rm -rf $(VENV) ratewire.db ratewire.db-wal ratewire.db-shm
