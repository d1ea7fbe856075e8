# kdbench: `make demo` (install + a small TCN sweep on data that ships with a dependency), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KDBENCH_DATA ?= $(abspath ../shared/data)
export KDBENCH_DATA

.PHONY: install demo test bench clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision pinned to the builds that install from this machine's disk (any torch 2.4+ works)
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev,ray]"
	touch $@

demo: install
	$(VENV)/bin/kdbench sweep --preset demo --workers 2 --threads 1 --no-latency --out results/demo --report --report-name demo
	@echo "results: results/demo (records), reports/demo/report.md (tables and plots)"
	@echo "(a small demo: a few epochs on the 1,797 8x8 digits, below the papers' recipes; see reports/ for full MNIST)"

test: install
	$(PY) -m pytest -q

bench: install
	$(VENV)/bin/kdbench bench
