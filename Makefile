# Two commands for a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench serve

# constraints.txt pins every package to the version the tests passed with (regenerate it with
# `.venv/bin/pip freeze --exclude-editable > constraints.txt` after changing a dependency).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rmnet demo

# The CAD page on the demo's lesions (run `make demo` first): http://127.0.0.1:$(PORT)/ (make serve PORT=8001)
PORT ?= 8000
serve: $(STAMP)
	$(VENV)/bin/rmnet serve runs/demo --index runs/demo/index --port $(PORT)

test: lint
	$(VENV)/bin/pytest

# The linter alone: ruff's checks and its formatting, as `make test` runs them.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# A quick benchmark (about a minute on 2 CPU cores): `rmnet demo` from scratch, timed, its table
# written to results/demo/ (the README's demo numbers). The others: docs/benchmarks.md.
bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.demo
