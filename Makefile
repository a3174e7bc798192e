# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= pipelines/configs/two_tower.yaml
EXTRAS := test,ann,spark,baselines,image,text

.PHONY: demo serve test test-all baselines ablation sweep screenshots venv lock clean clean-cache help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): setup.cfg constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to the CPU build on local disk; an unpinned torch pulls several GB of CUDA.
	$(PY) -m pip install --quiet torch==2.13.0
	# constraints.txt: the exact versions CI last passed with (setup.cfg has the supported ranges).
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install the project

lock:  ## refresh constraints.txt: newest versions setup.cfg allows, in a scratch venv (then run make test)
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet torch==2.13.0 -e '.[$(EXTRAS)]'
	{ sed -n '1,3p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v -i '^torch=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .venv-lock

# the last day of the bundled MovieLens latest-small
DEMO_DATE ?= 2018-09-24

demo: $(STAMP)  ## train on bundled MovieLens latest-small, then index + nightly candidates for its last day
	$(PY) -m pipelines.train_two_tower --config $(CONFIG) --set tracking.set_alias=champion \
		--summary-json runs/demo_summary.json
	$(PY) -m pipelines.nightly --config $(CONFIG) --date $(DEMO_DATE)

SERVE_MODEL ?= models:/recsys_cl_two_tower@champion
SERVE_PORT  ?= 5001

serve: $(STAMP)  ## REST endpoint for the champion model (after make demo): POST {"dataframe_records": [{"history": [...]}]} to :5001/invocations
	$(PY) -m pipelines.serve --model $(SERVE_MODEL) --port $(SERVE_PORT)

baselines: $(STAMP)  ## Popularity / ItemKNN / EASE under the same split and protocol
	$(PY) -m pipelines.evaluate_baselines --config $(CONFIG)

ablation: $(STAMP)  ## every two-tower variant x 3 seeds + the config's baselines (README's commands add ALS/BPR)
	$(PY) -m pipelines.ablation --config $(CONFIG) --seeds 0 1 2 --out runs/ablation.md

sweep: $(STAMP)  ## loss.kind x loss.temperature grid as nested MLflow runs + baselines
	$(PY) -m pipelines.sweep --config $(CONFIG) --grid loss.kind=softmax,debiased \
		--grid loss.temperature=0.05,0.1 --baselines popularity ease

screenshots: $(STAMP)  ## refresh docs/img/mlflow_compare.png from the browser test
	RECSYS_CL_SCREENSHOT_DIR=docs/img $(PY) -m pytest -q tests/ui

test: $(STAMP)  ## lint + type-check, then run the test suite (fast tests; slow ones need --runslow)
	$(PY) -m flake8 recsys_cl pipelines tests
	$(PY) -m mypy
	$(PY) -m pytest -q

test-all: $(STAMP)  ## include slow tests
	$(PY) -m pytest -q --runslow

CLEAN_ARGS ?=

clean-cache: $(STAMP)  ## list content-cache entries and crashed runs' checkpoints unused for 30 days; CLEAN_ARGS=--yes deletes them
	$(PY) -m pipelines.clean_cache --config $(CONFIG) $(CLEAN_ARGS)

clean:  ## remove .venv, runs/, mlruns/ and mlflow.db
	rm -rf $(VENV) runs mlruns mlflow.db
