# Two commands do all set-up on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test clean

# The install runs again when pyproject.toml is newer than the last one, so a new
# dependency reaches an existing .venv; `make clean` starts from nothing.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,plot]'
	touch $@

# The main job: time the training step of every variant and batch size on this
# machine's devices, print the table, save the JSON and draw the chart.
run: $(VENV)/.installed
	$(BIN)/python -m pytest benchmarks --benchmark-only -p no:cacheprovider \
		--benchmark-disable-gc --benchmark-columns=median,iqr,rounds,iterations \
		--benchmark-json=.benchmarks/latest.json

test: $(VENV)/.installed
	$(BIN)/python -m pytest -n auto

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
