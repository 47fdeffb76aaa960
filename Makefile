# retinakit: the two commands of the README.
#   make test  - create/refresh .venv (pinned torch), build the extension, run the tests
#   make demo  - the quickstart: train on the built-in shapes dataset, evaluate, draw
# Both are idempotent: .venv is reused while its pins, setup.py and this Makefile are unchanged,
# and the extension is rebuilt only when its sources change.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PINS := torch==2.14.0 torchvision==0.29.0
# `make test` installs the extras whose tests run here; `make demo` only the runtime deps and
# TensorBoard (no ONNX/Model Optimizer/DALI/test tools: a shorter set-up).
EXTRAS := dev,deploy,dali,video
BASE_STAMP := $(VENV)/.retinakit-base
DEPS_STAMP := $(VENV)/.retinakit-deps
EXT_CPU_STAMP := build/.retinakit-ext-cpu
EXT_CUDA_STAMP := build/.retinakit-ext-cuda
EXT_SRC := $(shell find retinakit/_C -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' \) 2>/dev/null)
PYTEST_ARGS ?=

# When nvcc is on PATH, `make test` compiles the CUDA sources too (they cannot run without a
# GPU, but CI proves they compile). nvcc on PATH may be a wrapper, so CUDA_HOME points at the
# toolkit. `make demo` compiles them only when a GPU is present as well (it would not use them).
NVCC := $(shell command -v nvcc 2>/dev/null)
GPU := $(shell nvidia-smi -L 2>/dev/null | head -n 1)
CUDA_HOME_GUESS := $(if $(wildcard /usr/local/cuda/bin),/usr/local/cuda,$(patsubst %/bin/nvcc,%,$(NVCC)))
CUDA_ENV := FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$(or $(TORCH_CUDA_ARCH_LIST),9.0)" CUDA_HOME=$(CUDA_HOME_GUESS) \
	CPATH="$$($(PY) -c 'import os,sysconfig;print(os.path.join(sysconfig.get_paths()["purelib"],"nvidia","cu13","include"))'):$${CPATH:-}"
TEST_EXT := $(if $(NVCC),$(EXT_CUDA_STAMP),$(EXT_CPU_STAMP))
# The demo reuses whatever build is current (a CUDA build also has the CPU kernels).
DEMO_EXT := $(if $(or $(wildcard $(EXT_CUDA_STAMP)),$(and $(NVCC),$(GPU))),$(EXT_CUDA_STAMP),$(EXT_CPU_STAMP))

.PHONY: test demo build venv clean lint gpu-check gpu-check-prepare

$(BASE_STAMP): setup.py Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo ">> installing pinned $(TORCH_PINS) and retinakit's runtime dependencies into $(VENV)"
	$(PIP) install -q --upgrade pip "setuptools>=64" wheel ninja
	$(PIP) install -q $(TORCH_PINS)  # first: setup.py imports torch (--no-build-isolation)
	RETINAKIT_NO_EXT=1 $(PIP) install -q $(TORCH_PINS) -e ".[tensorboard]" --no-build-isolation
	@$(PY) -c "import torch, torchvision; assert torch.__version__.startswith('2.14.0'), torch.__version__; print('>> torch', torch.__version__, 'torchvision', torchvision.__version__)"
	@touch $@

$(DEPS_STAMP): $(BASE_STAMP)
	@echo ">> installing retinakit[$(EXTRAS)] into $(VENV)"
	RETINAKIT_NO_EXT=1 $(PIP) install -q $(TORCH_PINS) -e ".[$(EXTRAS)]" --no-build-isolation
	@$(PY) -c "import torch; assert torch.__version__.startswith('2.14.0'), torch.__version__"
	@touch $@

venv: $(DEPS_STAMP)

# --force: setuptools would otherwise skip a C++-only -> CUDA rebuild of unchanged sources.
$(EXT_CPU_STAMP): $(BASE_STAMP) $(EXT_SRC) setup.py
	@echo ">> building retinakit._C (C++ sources)"
	$(PY) setup.py -q build_ext --inplace --force
	@mkdir -p build && rm -f $(EXT_CUDA_STAMP) && touch $@

$(EXT_CUDA_STAMP): $(BASE_STAMP) $(EXT_SRC) setup.py
	@echo ">> building retinakit._C (C++ and CUDA sources: FORCE_CUDA=1)"
	$(CUDA_ENV) $(PY) setup.py -q build_ext --inplace --force
	@mkdir -p build && rm -f $(EXT_CPU_STAMP) && touch $@

build: $(DEPS_STAMP) $(TEST_EXT)

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(BASE_STAMP) $(DEMO_EXT)
	$(PY) tools/demo.py

lint: $(DEPS_STAMP)
	$(PY) -m ruff check retinakit tools tests projects

clean:
	rm -rf build retinakit/_C*.so

# GPU check (docs/benchmarks.md, "GPU check"). `make gpu-check-prepare` runs HERE before the
# device call: it copies the cp312 wheels that the GPU machine lacks (it reaches no registry)
# into an ignored folder that the device tool carries. `make gpu-check` runs ON the GPU machine,
# with its own python3 (not .venv): every step, each timed, within 8 minutes, report in $$OUT.
DEVICE_WHEELS ?= ../shared/device-wheels
GPU_CHECK_WHEELS ?= .device-wheels
GPU_PYTHON ?= python3

# Runtime dependencies that neither the GPU machine's image nor $(DEVICE_WHEELS) holds: downloaded
# here (PyPI is reachable here, not there) as cp312 manylinux wheels, unless one is already there.
DEVICE_DOWNLOAD ?= msgspec

gpu-check-prepare:
	@test -d "$(DEVICE_WHEELS)" || { echo "gpu-check-prepare: no folder $(DEVICE_WHEELS); give DEVICE_WHEELS=<folder of cp312 wheels>"; exit 2; }
	mkdir -p "$(GPU_CHECK_WHEELS)" && cp "$(DEVICE_WHEELS)"/*.whl "$(GPU_CHECK_WHEELS)"/
	@for pkg in $(DEVICE_DOWNLOAD); do \
	  ls "$(GPU_CHECK_WHEELS)" | grep -qi "^$$pkg-" || $(PYTHON) -m pip download -q --no-deps --only-binary=:all: \
	    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	    --platform manylinux2014_x86_64 -d "$(GPU_CHECK_WHEELS)" "$$pkg" || exit 1; \
	done

gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py --output "$${OUT:-output/gpu_check}"
