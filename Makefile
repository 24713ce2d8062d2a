# Two entry points (see README): `make run` and `make test`. Everything installs into .venv through
# constraints.txt, which pins torch to the CPU build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup clean

$(STAMP): pyproject.toml constraints.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt -r requirements-nodeps.txt
	touch $@

setup: $(STAMP)
	$(BIN)/sidecar setup

run: $(STAMP)
	$(BIN)/sidecar serve

# the browser tests drive Debian's chromium (Playwright never downloads a browser here); only `make test` needs it
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium

# the catalog tests run a real PostgreSQL from Debian's package (tests/postgres_server.py); only `make test` needs it.
# No file target: the version folder (/usr/lib/postgresql/15) differs by release.
.PHONY: postgresql
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql; }

# CI=true: the tests of the real servers fail, never skip, when a server is missing
test: $(STAMP) $(CHROMIUM) postgresql
	CI=true $(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) .cache data
