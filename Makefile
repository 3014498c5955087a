# edge_sparse — `make build TARGET=rpi4` and `make test` are all a fresh clone needs.
# The first run makes .venv from python3.11 and installs the pinned stack (re-installed when
# pyproject.toml changes), and installs Debian's Fashion-MNIST package when it is missing.

PYTHON   ?= python3.11
VENV     ?= .venv
PY       := $(VENV)/bin/python
TARGET   ?= rpi4
DATASET  ?= fashion-mnist
DATA_DIR ?=
QUICK    ?=
SEED     ?= 0
DEVICE   ?=
ARGS     ?=
FMNIST   := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
STAMP    := $(VENV)/.installed

BUILD_FLAGS = --target $(TARGET) --dataset $(DATASET) --seed $(SEED) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(QUICK),--quick) $(ARGS)
# DEVICE=user@host | adb[:serial] on a build: the search's finalists are timed on that device
build: BUILD_FLAGS += $(if $(DEVICE),--target-device $(DEVICE))

.PHONY: help build test test-fast bench profile latency-check benchmarks-latency benchmarks-latency-check benchmarks-harness-fuzz seeds compare recipes verify-arm benchmarks study clean check-target data sysdeps setup

help:  ## list the targets of this Makefile
	@echo "make build TARGET=<name> [QUICK=1] [DATASET=cifar10 DATA_DIR=<dir>]   build dist/<name>/"
	@echo "make test                        the test suite (what CI runs)"
	@echo "make bench TARGET=<name> [DEVICE=user@host|adb[:serial]]   run the bundle's bench.py"
	@echo "make profile TARGET=<name> [DEVICE=user@host|adb[:serial]]   time the probe suite, write the target's latency table"
	@echo "make latency-check TARGET=host   the host latency table's predictions vs measured .tflite timings"
	@echo "make benchmarks-latency-check    device estimates vs real Pi 4 / Pixel 3 timings (NAS-Bench-201)"
	@echo "make verify-arm TARGET=<name>    run the bundle on an emulated aarch64 userland, compare outputs"
	@echo "make benchmarks                  dense vs shipped, side by side -> BENCHMARKS.md"
	@echo "make compare [QUICK=1] [DATASET=… DATA_DIR=…]  shipped vs width multiplier / Torch-Pruning / dense at equal latency"
	@echo "make study TARGET=<name>         sparsity x accuracy x robustness x latency sweep -> docs/study/"
	@echo "make bench-train                 the train stage's images/s vs a plain DataLoader loop -> BENCHMARKS.md"
	@echo "make clean                       remove build/, dist/ (keeps .venv)"
	@echo "targets: $$(ls targets | sed 's/.toml//' | tr '\n' ' ')"

check-target:
	@test -f targets/$(TARGET).toml || { echo "error: unknown TARGET=$(TARGET); valid: $$(ls targets | sed 's/.toml//' | tr '\n' ' ')" >&2; exit 2; }

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 (apt-get install python3.11 python3.11-venv)" >&2; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@# TFLite Support metadata writer: needs protobuf<4, onnx2tf pins 4.25.5, so it lives apart from
	@# site-packages and runs in a subprocess on pure-Python protobuf (edge_sparse/export/metadata.py)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target $(VENV)/tflite-support tflite-support==0.4.4
	@# test-only: real CIFAR/ImageNet sample images for the loader tests (foolbox's wheel carries them)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps foolbox==3.3.4
	@# AutoAttack's APGD-CE for the study (torchattacks; --no-deps: its requirements would pull torchvision over the pinned torch)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps torchattacks==3.5.1
	@touch $@

setup: $(STAMP)

data: sysdeps
	@if [ "$(DATASET)" = fashion-mnist ] && [ -z "$$EDGE_SPARSE_DATA" ] && [ ! -f $(FMNIST) ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's dataset-fashion-mnist ..."; \
	    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; } ; \
	  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
	    sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; \
	  fi; \
	  test -f $(FMNIST) || { echo "error: Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or set EDGE_SPARSE_DATA=<dir holding the four idx .gz files>" >&2; exit 2; }; \
	fi

# libusb-1.0: tflite-support's metadata library links it
sysdeps:
	@if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q libusb-1.0-0 >/dev/null; } ; \
	  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then sudo apt-get install -y -q libusb-1.0-0 >/dev/null; fi; \
	  ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || { echo "error: libusb-1.0 is missing: run 'sudo apt-get install libusb-1.0-0'" >&2; exit 2; }; \
	fi

build: check-target data $(STAMP)
	$(VENV)/bin/edge-sparse build $(BUILD_FLAGS)

test: data $(STAMP)
	$(PY) -m pytest -q --durations=12 tests

test-fast: data $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: check-target $(STAMP)
	@test -f dist/$(TARGET)/bench.py || { echo "error: no bundle in dist/$(TARGET); run 'make build TARGET=$(TARGET)' first" >&2; exit 2; }
	$(PY) -m edge_sparse.remote --bundle dist/$(TARGET) $(if $(DEVICE),--device $(DEVICE)) -- $(ARGS)

profile: check-target $(STAMP)
	$(VENV)/bin/edge-sparse profile --target $(TARGET) $(if $(DEVICE),--device $(DEVICE)) $(ARGS)

latency-check: check-target $(STAMP)
	$(VENV)/bin/edge-sparse latency check --target $(TARGET) $(ARGS)

verify-arm: check-target $(STAMP)
	@test -f dist/$(TARGET)/bench.py || { echo "error: no bundle in dist/$(TARGET); run 'make build TARGET=$(TARGET)' first" >&2; exit 2; }
	$(PY) -m edge_sparse.arm --bundle dist/$(TARGET) --target $(TARGET)

benchmarks: data $(STAMP)
	$(PY) -m benchmarks $(ARGS)

# the default build over seeds (resumable): mean +- sd of accuracy on the whole test split
SEEDS ?= 0,1,2
seeds: data $(STAMP)
	$(PY) -m benchmarks.seeds --target $(TARGET) --seeds $(SEEDS)

# the shipped model vs a width multiplier from scratch, Torch-Pruning's recipe and dense int8 at equal latency
# (resumable per point); QUICK=1: one budget, one seed, the QUICK slices; DATASET= DATA_DIR=: on your data
compare: data $(STAMP)
	$(PY) -m benchmarks.compare $(if $(QUICK),--quick) --dataset $(DATASET) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) --write $(ARGS)

# training recipes of the default build on the whole test split (resumable): RECIPES=a,b SEEDS=0,1
RECIPES ?= default
recipes: data $(STAMP)
	$(PY) -m benchmarks.recipes --recipes $(RECIPES) --seeds $(SEEDS) --write

# measured-latency claims: predictor accuracy, budget fill, speedups (after make build TARGET=rpi4 and TARGET=host)
benchmarks-latency: data $(STAMP)
	$(PY) -m benchmarks.latency $(ARGS)

# device estimates vs 15,625 real Pi 4 / Pixel 3 timings (NAS-Bench-201), k-fold; ARGS=--write-fit stores the fits
benchmarks-latency-check: $(STAMP)
	$(PY) -m benchmarks.latency_check $(ARGS)

# bench.py on 200 damaged models: never a signal, hang or traceback
benchmarks-harness-fuzz: $(STAMP)
	$(PY) -m benchmarks.harness_fuzz --bundle dist/$(TARGET) $(ARGS)

# not $(or $(SPARSITY),0,0.3,...): make splits $(or) arguments at the commas, which left only "0"
SPARSITY ?= 0,0.3,0.5,0.7
study: check-target data $(STAMP)
	$(VENV)/bin/edge-sparse study $(BUILD_FLAGS) --sparsity $(SPARSITY) --seeds $(SEEDS)

# torchvision 0.28 + timm 1.0.31 for edge_sparse/zoo_models.py, into build/zoo-libs (not the venv): --no-deps keeps
# the pinned CPU torch; the wheel's CUDA-built _C ops do not load, and the classifiers do not need them
.PHONY: zoo-deps
zoo-deps: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target build/zoo-libs torchvision==0.28.0 timm==1.0.31
	$(PY) -m edge_sparse.zoo_models

# the zoo's models and the registered mobile nets through QUICK builds at rpi4 2x and host 1.5x (resumable per model and
# budget; hours on 2 cores), then every shipped bundle timed again, together -> benchmarks/zoo.json and BENCHMARKS.md;
# ARGS=--models a,b  ARGS=--force
.PHONY: zoo
zoo: data $(STAMP)
	@test -f build/zoo-libs/timm/__init__.py || $(MAKE) zoo-deps
	$(PY) -m benchmarks.zoo --write $(ARGS)
	$(PY) -m benchmarks.zoo --write --retime

# the train stage's images/s against a plain DataLoader loop of the same model and files, alternating in one run
# (CPU; CUDA too when torch sees it) -> benchmarks/train_speed.json and BENCHMARKS.md; minutes on 2 cores
.PHONY: bench-train
bench-train: data $(STAMP)
	$(PY) -m benchmarks.train_speed --write $(ARGS)

clean:
	rm -rf build dist
