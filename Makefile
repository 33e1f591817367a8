# The README's commands. Everything installs into .venv; nothing outside it is touched except the
# Debian Fashion-MNIST package, which is installed when running as root with apt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cnnlab-installed
FASHION_DIR := /usr/share/datasets/fashion-mnist
DEMO_OUT ?= demo

.PHONY: setup demo test test-fast test-precision bench dataset clean gpu-check gpu-check-dry

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>/dev/null || true
	# torch is pinned here (the package itself asks only for torch>=2.4); these wheels are on local disk
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev,ray,tracking,export]'
	@touch $@

dataset:
	@if [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: $(FASHION_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null \
	    && echo "Fashion-MNIST installed in $(FASHION_DIR)"; \
	else \
	  echo "Fashion-MNIST not installed: run 'sudo apt-get install dataset-fashion-mnist' or pass --data-dir (cnnlab can also download it when online)"; \
	fi

setup: $(STAMP) dataset

demo: setup
	$(BIN)/cnnlab demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The precision-sensitive tests once more, with "auto" meaning the precision it does not pick on
# this processor (bf16 where the CPU has no native bf16, fp32 where it has), so a test that holds
# under one precision only fails here too (CI runs this after `make test`).
test-precision: $(STAMP)
	CNNLAB_AUTO_PRECISION=$$($(BIN)/python -c "import torch; from cnnlab.engine import auto_precision as a; \
	  print('fp32' if a(torch.device('cpu')) == 'bf16' else 'bf16')") $(BIN)/python -m pytest -q -m precision

# cnnlab's default training path against a plain PyTorch loop and the machine's peak (bench/README.md)
bench: setup
	$(BIN)/python bench/run.py --json auto

# GPU checks (bench/gpu_check.py; bench/README.md, "GPU check"). gpu-check runs on a CUDA machine with its own
# python3 and no install (no .venv there); elsewhere it says so in one line and fails. gpu-check-dry runs the
# same steps tiny on the CPU (the test suite runs it too).
GPU_CHECK_ARGS ?=
gpu-check:
	@$(PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

gpu-check-dry:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) bench/gpu_check.py --dry-run $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
