# make demo   create the venv, install, run the whole pipeline on the built-in dataset,
#             write its HTML report and print every stage's mIoU
# make test   create the venv, install, run the tests
# make test-packaging   the wheel and the conda env's pip part in fresh venvs
# make lock   refresh requirements.lock (exact versions and hashes) from pyproject.toml
#             (as pip resolves it on this machine); LOCK=requirements-cu126.lock the other
# make rulegraph   redraw docs/rulegraph.png (needs Graphviz's `dot`)
# make schema  rewrite workflow/schemas/config.schema.yaml from the stages' settings

PYTHON ?= python3
VENV ?= .venv
# The lock the venv is installed from: requirements.lock (torch 2.14.1, CUDA 13.0), or
# requirements-cu126.lock (torch 2.7.1, CUDA 12.6: V100, P100, drivers from 525), e.g.
# `make test LOCK=requirements-cu126.lock VENV=.venv-cu126`.
LOCK ?= requirements.lock
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: venv demo test test-packaging lock rulegraph schema clean

venv: $(STAMP)

# The locked dependencies (hash-checked), then the package itself from this source.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes \
		-r $(LOCK)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --quiet rules
	$(BIN)/snakemake --quiet all --report results/demo/report.html
	$(BIN)/wsss summary results/demo
	@echo "HTML report (open in a browser): results/demo/report.html"

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=10 -m "not packaging" tests

# The wheel and the conda env file's pip part, each installed into a fresh venv (torch
# included: minutes, several GB on disk while they run).
test-packaging: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m packaging tests/test_packaging.py

# The workflow on a real single-node SLURM (tests/test_slurm.py): installs Debian's
# slurm-wlm and munge first where they are missing (root and apt-get needed; nothing else
# installs them), then the test starts the daemons with two fake GPUs, runs the workflow
# through sbatch and stops them (about 6 minutes). `make test` skips it.
.PHONY: test-slurm
test-slurm: $(STAMP)
	tools/install-slurm.sh
	WSSS_TEST_SLURM=1 $(BIN)/python -m pytest -rs --durations=5 tests/test_slurm.py

# The package's dependencies with its workflow and test extras, pinned with hashes.
lock: $(STAMP)
	$(BIN)/python tools/lock.py --out $(LOCK)

# The config schema: the stages' Params dataclasses + workflow/schemas/config.base.yaml.
schema: $(STAMP)
	$(BIN)/python -m wsss.config_schema

rulegraph: $(STAMP)
	$(BIN)/snakemake --rulegraph | dot -Tpng -Gdpi=110 > docs/rulegraph.png

clean:
	rm -rf results data/demo .snakemake
