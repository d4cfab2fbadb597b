# digits — Kaggle Digit Recognizer pipeline. `make` lists the targets.

#################################################################################
# GLOBALS                                                                       #
#################################################################################

PYTHON_SYSTEM ?= python3
VENV          := .venv
PYTHON        := $(VENV)/bin/python
PROFILE       ?= cpu
RUN           ?= $(PROFILE)
DATA          ?= data
# Extra flags for the pipeline command, e.g. make train ARGS="--set epochs=20"
ARGS          ?=
# report/tensorboard: the run named by RUN=… on the command line, else the latest run (all runs)
RUN_GIVEN     := $(filter command line environment,$(origin RUN))
# Hyperparameter search (make tune): study name, target total trials, seconds, local processes
STUDY         ?= default
TRIALS        ?= 30
TIMEOUT       ?= 1800
WORKERS       ?= auto

.DEFAULT_GOAL := help
.PHONY: help install download tune demo train submission submit report compare tensorboard dashboard test bench clean clean-run

#################################################################################
# SETUP                                                                         #
#################################################################################

## Create .venv and install requirements.txt (other targets do this for you)
install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON_SYSTEM) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PYTHON) -m pip install --quiet -r requirements-dev.txt
	touch $@

#################################################################################
# PIPELINE                                                                      #
#################################################################################

## Run the whole pipeline on the embedded sample (no data download, no credentials)
demo: install
	$(PYTHON) -m pipeline demo $(ARGS)

## Download the competition data from Kaggle into DATA (needs credentials, see README "Kaggle")
download: install
	$(PYTHON) -m pipeline download --data $(DATA) $(ARGS)

## Search hyperparameters with Optuna (STUDY, TRIALS, TIMEOUT, WORKERS) → runs/tune/<STUDY>/; re-running resumes
tune: install
	$(PYTHON) -m pipeline tune --data $(DATA) --profile $(PROFILE) --study $(STUDY) --trials $(TRIALS) --timeout $(TIMEOUT) --workers $(WORKERS) $(ARGS)

## k-fold train a run on DATA=data (PROFILE=cpu, RUN=<profile>); re-running resumes
train: install
	$(PYTHON) -m pipeline train --data $(DATA) --profile $(PROFILE) --run $(RUN) $(ARGS)

## Ensemble the run's fold models on test.csv → submissions/submission.csv
submission: install
	$(PYTHON) -m pipeline predict --data $(DATA) --run $(RUN) $(ARGS)

## Validate and upload a run's submission (RUN=name, default: latest finished run), wait for the score
submit: install
	$(PYTHON) -m pipeline submit --data $(DATA) $(if $(filter command line environment,$(origin RUN)),--run $(RUN)) $(ARGS)

#################################################################################
# INSPECT                                                                       #
#################################################################################

## Rebuild runs/<RUN>/report.html and print a summary (default: the latest run)
report: install
	$(PYTHON) -m pipeline report $(if $(RUN_GIVEN),--run $(RUN)) $(ARGS)

## Runs side by side to pick a submission: make compare RUNS="cpu simple" (default: all)
compare: install
	$(PYTHON) -m pipeline compare $(RUNS) $(ARGS)

## Serve TensorBoard for runs/<RUN> (default: every run) on http://localhost:6006
tensorboard: install
	$(VENV)/bin/tensorboard --logdir runs$(if $(RUN_GIVEN),/$(RUN))

## Watch tuning study STUDY in optuna-dashboard on http://127.0.0.1:8080 (PORT=…), until Ctrl-C
dashboard: install
	$(PYTHON) -m pipeline dashboard --study $(STUDY) $(if $(PORT),--port $(PORT)) $(ARGS)

#################################################################################
# QUALITY                                                                       #
#################################################################################

# One more test worker than cores: part of the suite waits on child processes, heartbeats and
# servers, and the extra worker fills those gaps (scripts/results/make-test-time.txt).
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))

## Run the test suite (installs the dev requirements first); -rs lists why tests were skipped
test: $(VENV)/.installed-dev
	$(PYTHON) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile tests

## Measure load, training and inference speed (+ full CV with CV=cpu) → runs/bench/
bench: install
	$(PYTHON) scripts/benchmark.py --data $(DATA) --profile $(PROFILE) $(if $(CV),--cv $(CV)) $(ARGS)

## Remove runs/, submissions and the sample (keeps .venv and downloaded data)
clean:
	rm -rf runs data/sample
	find submissions -type f ! -name .gitkeep -delete
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

## Delete one run's folder to start it over: make clean-run RUN=name
clean-run:
	rm -rf runs/$(RUN)

#################################################################################
# HELP                                                                          #
#################################################################################

## Show this list of targets
help:
	@awk '/^## /{doc=substr($$0,4)} /^[a-zA-Z_-]+:/{if(doc) printf "  %-12s %s\n", substr($$1,1,length($$1)-1), doc; doc=""}' $(MAKEFILE_LIST)
