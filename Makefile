# digits — Kaggle Digit Recognizer pipeline. `make` lists the targets.

#################################################################################
# GLOBALS                                                                       #
#################################################################################

PYTHON_SYSTEM ?= python3
VENV          := .venv
PYTHON        := $(VENV)/bin/python
PROFILE       ?= cpu
# The run a target takes. Unset: `train` names it after PROFILE; submission, submit and report
# take the most recently trained run (never a demo run); tensorboard shows every run.
RUN           ?=
DATA          ?= data
# The time `make train` may take, to the submission file (e.g. 30m, 1.5h; unset: the fixed recipe)
BUDGET        ?=
# Extra flags for the pipeline command, e.g. make train ARGS="--set epochs=20"
ARGS          ?=
# What clean-run / clean-study delete: only a name typed on the make command line.
RUN_NAMED     := $(if $(filter command line,$(origin RUN)),$(RUN))
STUDY_NAMED   := $(if $(filter command line,$(origin STUDY)),$(STUDY))
# Hyperparameter search (make tune): study name, target total trials, seconds, local processes
STUDY         ?= default
TRIALS        ?= 30
TIMEOUT       ?= 1800
WORKERS       ?= auto

.DEFAULT_GOAL := help
.PHONY: help install download tune demo train kaggle-train submission submit submissions report compare tensorboard dashboard test bench clean clean-run clean-study

#################################################################################
# SETUP                                                                         #
#################################################################################

## Create .venv and install the package editable with requirements.txt (other targets do this for you)
install: $(VENV)/.installed

# Editable: .venv gets the `digits` command, and scripts/ import the package from this checkout.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON_SYSTEM) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet --editable .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PYTHON) -m pip install --quiet -r requirements-dev.txt
	touch $@

#################################################################################
# PIPELINE                                                                      #
#################################################################################

## The whole pipeline on the embedded sample in data/sample/ (no download; never touches your data or submission.csv)
demo: install
	$(PYTHON) -m pipeline demo $(ARGS)

## Download the competition data from Kaggle into DATA (needs credentials, see README "Kaggle")
download: install
	$(PYTHON) -m pipeline download --data $(DATA) $(ARGS)

## Search hyperparameters with Optuna (STUDY, TRIALS, TIMEOUT, WORKERS) → runs/tune/<STUDY>/; re-running resumes
tune: install
	$(PYTHON) -m pipeline tune --data $(DATA) --profile $(PROFILE) --study $(STUDY) --trials $(TRIALS) --timeout $(TIMEOUT) --workers $(WORKERS) $(ARGS)

## k-fold train a run on DATA=data (PROFILE=cpu; RUN=name, default: the profile's name; BUDGET=30m: the recipe that fits, measured on this machine); re-running resumes
train: install
	$(PYTHON) -m pipeline train --data $(DATA) --profile $(PROFILE) $(if $(RUN),--run $(RUN)) $(if $(BUDGET),--budget $(BUDGET)) $(ARGS)

## Train a run on Kaggle's free GPU and install it into runs/ (PROFILE=gpu unless given; RUN=name, default: the profile's name; needs Kaggle credentials)
kaggle-train: install
	$(PYTHON) -m pipeline kaggle-train $(if $(filter command line,$(origin PROFILE)),--profile $(PROFILE)) $(if $(RUN),--run $(RUN)) $(ARGS)

## Average a run's models (refit members, else fold models) on test.csv → submissions/submission.csv (RUN=name, default: the latest trained run)
submission: install
	$(PYTHON) -m pipeline predict --data $(DATA) $(if $(RUN),--run $(RUN)) $(ARGS)

## Show and upload a run's submission (RUN=name, default: the latest trained run), wait for the score
submit: install
	$(PYTHON) -m pipeline submit --data $(DATA) $(if $(RUN),--run $(RUN)) $(ARGS)

## List the competition's past submissions on Kaggle with their scores and the local run each came from
submissions: install
	$(PYTHON) -m pipeline submissions $(ARGS)

#################################################################################
# INSPECT                                                                       #
#################################################################################

## Rebuild runs/<RUN>/report.html and print a summary (RUN=name, default: the latest trained run)
report: install
	$(PYTHON) -m pipeline report $(if $(RUN),--run $(RUN)) $(ARGS)

## Runs side by side to pick a submission: make compare RUNS="cpu simple" (default: all)
compare: install
	$(PYTHON) -m pipeline compare $(RUNS) $(ARGS)

## Serve TensorBoard for runs/<RUN> (default: every run) on http://localhost:6006
tensorboard: install
	$(VENV)/bin/tensorboard --logdir runs$(if $(RUN),/$(RUN))

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

## Remove what is rebuilt in seconds: the sample, parse caches, __pycache__ (keeps runs, studies, submissions, data)
clean:
	rm -rf data/sample runs/cache .pytest_cache
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

## Delete one trained run, runs/<RUN>/, to start it over: make clean-run RUN=name (its submissions/<RUN>.csv stays)
clean-run:
	@run='$(RUN_NAMED)'; \
	if [ -z "$$run" ]; then \
		echo "make clean-run deletes a trained run: name it on the command line, e.g. make clean-run RUN=cpu" >&2; exit 2; fi; \
	if ! printf '%s' "$$run" | grep -Eqx '[A-Za-z0-9][A-Za-z0-9_.-]*' || \
		{ [ ! -f "runs/$$run/config.json" ] && [ ! -f "runs/$$run/blend.json" ]; }; then \
		echo "make clean-run: runs/$$run/ is not a run (no config.json or blend.json); nothing deleted" >&2; exit 2; fi; \
	echo "deleting runs/$$run/ (its fold models, metrics and report; submissions/$$run.csv stays)"; \
	rm -rf "runs/$$run"

## Delete one tuning study's folder, runs/tune/<STUDY>/: make clean-study STUDY=name (a --storage database is not touched)
clean-study:
	@study='$(STUDY_NAMED)'; \
	if [ -z "$$study" ]; then \
		echo "make clean-study deletes a tuning study: name it on the command line, e.g. make clean-study STUDY=default" >&2; exit 2; fi; \
	if ! printf '%s' "$$study" | grep -Eqx '[A-Za-z0-9][A-Za-z0-9_.-]*' || [ ! -d "runs/tune/$$study" ]; then \
		echo "make clean-study: runs/tune/$$study/ is not a study folder; nothing deleted" >&2; exit 2; fi; \
	echo "deleting runs/tune/$$study/ (its study.db, best_params.json and plots)"; \
	rm -rf "runs/tune/$$study"

#################################################################################
# HELP                                                                          #
#################################################################################

## Show this list of targets
help:
	@awk '/^## /{doc=substr($$0,4)} /^[a-zA-Z_-]+:/{if(doc) printf "  %-12s %s\n", substr($$1,1,length($$1)-1), doc; doc=""}' $(MAKEFILE_LIST)
