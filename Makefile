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
EXTRAS := dev,deploy,dali
DEPS_STAMP := $(VENV)/.retinakit-deps
EXT_STAMP := build/.retinakit-ext
EXT_SRC := $(shell find retinakit/_C -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' \) 2>/dev/null)
PYTEST_ARGS ?=

# When nvcc is on PATH, the CUDA sources are compiled too (they cannot run without a GPU,
# but CI proves they compile). nvcc on PATH may be a wrapper, so CUDA_HOME points at the toolkit.
NVCC := $(shell command -v nvcc 2>/dev/null)
CUDA_HOME_GUESS := $(if $(wildcard /usr/local/cuda/bin),/usr/local/cuda,$(patsubst %/bin/nvcc,%,$(NVCC)))
ifneq ($(NVCC),)
BUILD_ENV := FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$(or $(TORCH_CUDA_ARCH_LIST),9.0)" CUDA_HOME=$(CUDA_HOME_GUESS) \
	CPATH="$$($(PY) -c 'import os,sysconfig;print(os.path.join(sysconfig.get_paths()["purelib"],"nvidia","cu13","include"))'):$${CPATH:-}"
endif

.PHONY: test demo build venv clean lint

$(DEPS_STAMP): setup.py Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo ">> installing pinned $(TORCH_PINS) and retinakit[$(EXTRAS)] into $(VENV)"
	$(PIP) install -q --upgrade pip "setuptools>=64" wheel ninja
	$(PIP) install -q $(TORCH_PINS)
	RETINAKIT_NO_EXT=1 $(PIP) install -q $(TORCH_PINS) -e ".[$(EXTRAS)]" --no-build-isolation
	@$(PY) -c "import torch, torchvision; assert torch.__version__.startswith('2.14.0'), torch.__version__; print('>> torch', torch.__version__, 'torchvision', torchvision.__version__)"
	@touch $@

venv: $(DEPS_STAMP)

$(EXT_STAMP): $(DEPS_STAMP) $(EXT_SRC) setup.py
	@echo ">> building retinakit._C $(if $(NVCC),(C++ and CUDA sources: FORCE_CUDA=1),(C++ sources))"
	$(BUILD_ENV) $(PY) setup.py -q build_ext --inplace
	@mkdir -p build && touch $@

build: $(EXT_STAMP)

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

demo: build
	$(PY) tools/demo.py

lint: $(DEPS_STAMP)
	$(PY) -m ruff check retinakit tools tests projects

clean:
	rm -rf build retinakit/_C*.so
