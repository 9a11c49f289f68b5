# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=70.1" wheel
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mailpipe serve

# pytest's exit code 5 means it ran no test: that is a failure too.
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); code=$$?; \
	if [ $$code -eq 5 ]; then echo "pytest ran no tests" >&2; exit 1; fi; exit $$code

# Working files under var/bench, beside the server's own data (see README, Performance).
bench: $(STAMP)
	mkdir -p var/bench
	for b in benchmarks/bench_*.py; do TMPDIR=$(CURDIR)/var/bench $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) var
