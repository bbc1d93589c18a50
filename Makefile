# The two commands of the README:
#   make book   build the HTML book, executing every chapter (strict: warnings and failing cells fail)
#   make test   the whole test suite: unit tests, nbval on every chapter, the papermill rerun,
#               and a strict book build
# Both create .venv if it is missing and install everything into it (tools/install.py).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.immulib-installed

# Development data: the project's shared data folder, when there is one beside the checkout.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/.),)
export IMMULIB_DATA ?= $(SHARED_DATA)
endif

.PHONY: install book test clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml constraints/cpu.txt tools/install.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) tools/install.py
	touch $@

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . --builder html -W -n --keep-going
	@echo "The book is at _build/html/index.html"

# Two pytest-xdist workers share the machine's cores, so each (and every kernel it starts) runs
# single-threaded BLAS/torch: oversubscribed threads make small matrix ops many times slower.
test: $(STAMP)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PY) -m pytest tests book --nbval-lax --nbval-current-env -n 2 --dist loadfile --durations=15

# Student notebooks (solutions replaced by stubs) and the Colab notebooks (README: publishing).
.PHONY: student colab
student: $(STAMP)
	rm -rf _build/student && $(PY) -m tools.student _build/student

colab: $(STAMP)
	rm -rf colab && $(PY) -m tools.colab colab

clean:
	rm -rf _build .pytest_cache
