# Two commands do all set-up on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-docs test-dispatch gpu-check gpu-attribute clean

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

# worksteal: an idle worker takes tests from a busy one, so the few slow tests (each starts
# worker processes) do not end the run on one core (177 s against 204-222 s with the
# default scheduling, 2 cores).
test: $(VENV)/.installed
	$(BIN)/python -m pytest -n auto --dist worksteal

# Every cifar-spec command README.md and docs/ show, run at its smallest size in a folder of
# its page's own (tests/test_doc_commands.py): minutes of counting under valgrind, so a tier
# of its own, left out of a plain `pytest` and run by CI.
test-docs: $(VENV)/.installed
	$(BIN)/python -m pytest -n auto --dist worksteal -m docs

# The numeric part of the spec under every ATen and oneDNN dispatch this CPU offers, with
# how much of each tolerance was used (docs/tolerances.md); 19 settings on an AVX-512 CPU.
test-dispatch: $(VENV)/.installed
	$(BIN)/python tests/dispatch_matrix.py

# On a GPU machine: the CUDA half of the spec, the CUDA benchmarks and a training run,
# with this checkout's venv where there is one, else the machine's python3 (a GPU box
# often has torch already and no network to install it).
gpu-check:
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) .ci/gpu-check

# On a GPU machine: a convolution planted to run twice, compared with --attribute; the table
# must name its kernels first (issue 29).
gpu-attribute:
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) .ci/gpu-attribute

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
