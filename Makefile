# One entry point for a new machine: each target creates .venv on its own if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo docs bench clean-ext gpu-check sim-gpu-check cuda-api-check

setup: $(STAMP)

$(STAMP): requirements-dev.txt setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python examples/lenet_pytorch.py

docs: $(STAMP)
	$(BIN)/python -m sphinx -W -q -b html docs docs/_build/html

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_pytorch_module.py

clean-ext: $(STAMP)
	$(BIN)/python -c "import shutil, megengine.module.pytorch as p; d = p.cache_dir(); shutil.rmtree(d, ignore_errors=True); print('removed', d)"

# On a machine with an NVIDIA GPU (no .venv there): the suite on CUDA and on cpu0, the GPU
# benchmarks, one summary; exits 2 at once where CUDA is not usable. See benchmarks/gpu_check.py.
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} python3 benchmarks/gpu_check.py

# Anywhere (no GPU needed): the suite on 1, then 2 simulated CUDA devices (tests/simcuda), which
# keep CuPy's rules (no implicit host conversion, no host arrays in kernels, the current device).
sim-gpu-check: $(STAMP)
	MGE_SIM_CUDA=1 $(BIN)/python -m pytest -q -p no:cacheprovider
	MGE_SIM_CUDA=2 $(BIN)/python -m pytest -q -p no:cacheprovider

# Anywhere (no GPU needed): every CuPy / torch CUDA name and call of the project checked against
# the real CuPy 14.2 (the GPU machine's) and torch, and the fused kernels compiled for sm_90 with
# NVRTC; CuPy lives in a scratch venv of its own, never in .venv. See tests/simcuda/api_check.py.
CUPY_VENV ?= /tmp/megengine-cupy-venv
cuda-api-check:
	test -x $(CUPY_VENV)/bin/python || $(PYTHON) -m venv $(CUPY_VENV)
	$(CUPY_VENV)/bin/python -m pip install -q "cupy-cuda13x==14.2.0" "nvidia-cuda-nvrtc==13.*" numpy torch==2.13.0 pytest
	$(CUPY_VENV)/bin/python tests/simcuda/api_check.py --quiet
