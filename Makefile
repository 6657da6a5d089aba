# The two commands: `make serve` and `make test`. Each sets up what is missing
# (deploy/install-deps.sh, idempotent), builds, and fetches the default model.
BUILD ?= build
BUILD_TYPE ?= Release
# The project venv (made by setup); override with PY=python3 where torch is system-wide.
PY ?= $(CURDIR)/.venv/bin/python
PROM_PREFIX ?= /opt/svdq/prometheus-cpp/usr
SERVE_ARGS ?=
# The fuzz harnesses' build folder (fuzz/build.sh) and each one's run in `make test`.
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 15

.PHONY: all setup configure build model serve test test-cpp test-python test-fuzz clean

all: build

setup:
ifndef SVDQ_SKIP_SETUP
	@bash deploy/install-deps.sh
endif

$(BUILD)/build.ninja: | setup
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DSVDQ_PYTHON=$(PY) \
	  "-DCMAKE_PREFIX_PATH=$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)');$(PROM_PREFIX);$$CMAKE_PREFIX_PATH"

configure: $(BUILD)/build.ninja

build: setup configure
	cmake --build $(BUILD)

model: setup
	@bash deploy/fetch-model.sh

serve: build model
	exec $(BUILD)/server/svdq-server $(SERVE_ARGS)

test: build model test-cpp test-python test-fuzz

test-cpp:
	ctest --test-dir $(BUILD) -L cpu --output-on-failure

test-python:
	SVDQ_BUILD_DIR=$(abspath $(BUILD)) $(PY) -m pytest -q tests/integration

# libFuzzer harnesses (fuzz/) under ASan + UBSan, FUZZ_SECONDS each; no CMake build needed.
test-fuzz: setup
	bash fuzz/build.sh $(FUZZ_BUILD)
	bash fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_BUILD)

clean:
	rm -rf $(BUILD)
