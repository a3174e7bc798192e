# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= pipelines/configs/two_tower.yaml

.PHONY: demo test test-all baselines venv clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU build on local disk; an unpinned torch pulls several GB of CUDA.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,ann,spark,baselines]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install the project

demo: $(STAMP)  ## train on bundled MovieLens latest-small, print test metrics and the MLflow run
	$(PY) -m pipelines.train_two_tower --config $(CONFIG) --summary-json runs/demo_summary.json

baselines: $(STAMP)  ## Popularity / ItemKNN / EASE under the same split and protocol
	$(PY) -m pipelines.evaluate_baselines --config $(CONFIG)

test: $(STAMP)  ## run the test suite (fast tests; slow ones need --runslow)
	$(PY) -m pytest -q

test-all: $(STAMP)  ## include slow tests
	$(PY) -m pytest -q --runslow

clean:
	rm -rf $(VENV) runs mlruns mlflow.db
