# Thin wrapper over CMake. The two commands of the README:
#   make demo   build and run flashattn-bench (GPU if present, else the CPU backend)
#   make test   build everything and run every test (GPU tests skip without a GPU)
# Options pass through, e.g.  make test CMAKE_ARGS="-DFA_CUDA=OFF"
#                             make test CMAKE_ARGS="-DFA_HDIMS=128 -DFA_DTYPES=bf16 -DFA_CUDA_ARCHS=80"
BUILD ?= build
CMAKE_ARGS ?=
DEMO_ARGS ?=
JOBS ?= $(shell nproc)

.PHONY: all setup configure build demo test clean

all: build

setup:
	@scripts/setup-deps

configure: setup
	@cmake -S . -B $(BUILD) -G Ninja $(CMAKE_ARGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

demo: build
	$(BUILD)/flashattn-bench $(DEMO_ARGS)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

clean:
	rm -rf $(BUILD)
