# `make help` lists the targets. The two commands of the README are `make book` and `make test`;
# `make check` is the quick one to run before every commit.
# Every target creates .venv if it is missing and installs everything into it (tools/install.py).
# Times: measured on the project's 2-core machine (CONTRIBUTING.md, "How long things take").

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.immulib-installed

# Development data: the project's shared data folder, when there is one beside the checkout.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/.),)
export IMMULIB_DATA ?= $(SHARED_DATA)
endif

# The library draws no progress bars in the book and the tests (immulib honours TQDM_DISABLE).
export TQDM_DISABLE := 1
export HF_HUB_OFFLINE := 1
# Two pytest-xdist workers share the machine's cores, so each (and every kernel it starts) runs
# single-threaded BLAS/torch: oversubscribed threads make small matrix ops many times slower.
SINGLE_THREAD := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
PYTEST := $(SINGLE_THREAD) $(PY) -m pytest -n 2 --dist loadfile

.DEFAULT_GOAL := help
.PHONY: help install check lint test book chapter student colab clean

help: ## this list
	@echo "make TARGET   (times measured on 2 CPU cores; see CONTRIBUTING.md)"
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z]+):.*## /  \1\t/' | expand -t 12

install: $(STAMP) ## create .venv and install immulib, the book and the test tools (~2.5 min once)

$(STAMP): requirements.txt pyproject.toml constraints/cpu.txt tools/install.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m tools.install
	touch $@

lint: $(STAMP) ## ruff check and ruff format --check (~1 s)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

check: lint ## lint plus the fast tests, no chapter executed (~40 s)
	$(PYTEST) tests -m "not slow" -q

# Each chapter is executed once, by the strict book build inside tests/test_book.py (execution
# cache in _build/.jupyter_cache); nbval's and the student notebooks' checks read that execution.
test: $(STAMP) ## everything CI runs: unit tests, one strict build executing each chapter, the papermill rerun and the browser check (~13 min; ~6 min with the execution cache warm)
	$(PYTEST) tests --durations=15

book: $(STAMP) ## build the HTML book into _build/html, strict; reuses the executions of make test (~6 min cold, ~1 min warm)
	$(PY) -m tools.book

chapter: $(STAMP) ## run one chapter in place under nbval: make chapter CHAPTER=book/05_house_prices.md
	@test -n "$(CHAPTER)" || { echo "usage: make chapter CHAPTER=book/NN_name.md"; exit 2; }
	$(SINGLE_THREAD) $(PY) -m pytest $(CHAPTER) --nbval-lax --nbval-current-env -p no:xdist -q

# Student notebooks (solutions replaced by stubs) and the Colab notebooks (README: publishing).
student: $(STAMP) ## write the student notebooks into _build/student (~5 s)
	rm -rf _build/student && $(PY) -m tools.student _build/student

colab: $(STAMP) ## regenerate the Colab notebooks in colab/ (~5 s)
	rm -rf colab && $(PY) -m tools.colab colab

clean: ## remove _build (the book and its execution cache) and the pytest cache
	rm -rf _build .pytest_cache
