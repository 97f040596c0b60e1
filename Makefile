# make demo   create the venv, install, run the whole pipeline on the built-in dataset,
#             write its HTML report and print every stage's mIoU
# make test   create the venv, install, run the tests
# make rulegraph   redraw docs/rulegraph.png (needs Graphviz's `dot`)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: venv demo test rulegraph clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --quiet rules
	$(BIN)/snakemake --quiet all --report results/demo/report.html
	$(BIN)/wsss summary results/demo
	@echo "HTML report (open in a browser): results/demo/report.html"

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=10 tests

rulegraph: $(STAMP)
	$(BIN)/snakemake --rulegraph | dot -Tpng -Gdpi=110 > docs/rulegraph.png

clean:
	rm -rf results data/demo .snakemake
