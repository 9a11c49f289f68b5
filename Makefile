# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two stamps: `make run` installs only what the server needs (so a missing
# runtime dependency shows there, as it would for `pip install mailpipe`);
# `make test` adds the test extras on top.
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(RUNTIME_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=70.1" wheel
	$(BIN)/pip install -q -e .
	touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(RUNTIME_STAMP)
	$(BIN)/mailpipe serve

# pytest's exit code 5 means it ran no test: that is a failure too.
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); code=$$?; \
	if [ $$code -eq 5 ]; then echo "pytest ran no tests" >&2; exit 1; fi; exit $$code

# The protocol and how to read the figures: docs/benchmarks.md.
# Working files under var/bench, beside the server's own data (see README, Performance).
# chattr +T (ext4): each run's directory goes to a fresh block group.
# Haraka (a peer of bench_smtp) is installed into var/haraka when npm exists;
# without it bench_smtp reports Haraka as skipped and runs the other peers.
bench: $(STAMP)
	mkdir -p var/bench
	-chattr +T var/bench 2>/dev/null
	if command -v npm >/dev/null 2>&1; then benchmarks/haraka/install.sh var/haraka || echo "Haraka not installed: bench_smtp will skip it"; \
	else echo "npm not found: bench_smtp will skip Haraka (install Node.js 20+ and npm)"; fi
	for b in benchmarks/bench_*.py; do TMPDIR=$(CURDIR)/var/bench $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) var
