# Thin wrapper over CMake. The two commands of the README:
#   make demo   build and run flashattn-bench (GPU if present, else the CPU backend), then time
#               the peer the user already has (torch SDPA, when $(PYTHON) imports torch) on the
#               same problem: tools/demo_peer.py
#   make test   build everything and run every test (GPU tests skip without a GPU)
# Options pass through, e.g.  make test CMAKE_ARGS="-DFA_CUDA=OFF"
#                             make test CMAKE_ARGS="-DFA_HDIMS=128 -DFA_DTYPES=bf16 -DFA_CUDA_ARCHS=80"
#                             make demo DEMO_ARGS="--causal --seqlen 4096"
BUILD ?= build
CMAKE_ARGS ?=
DEMO_ARGS ?=
JOBS ?= $(shell nproc)
PYTHON ?= python3

# Without a GPU the demo runs on the CPU backend, so it builds the CPU-only library (seconds)
# instead of every CUDA kernel it could not run. `make test` always compiles the kernels.
HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAVE_GPU),1)
DEMO_BUILD ?= $(BUILD)
DEMO_CMAKE_ARGS ?= $(CMAKE_ARGS)
else
DEMO_BUILD ?= $(BUILD)-cpuonly
DEMO_CMAKE_ARGS ?= -DFA_CUDA=OFF $(CMAKE_ARGS)
endif

.PHONY: all setup configure build demo test clean

all: build

setup:
	@scripts/setup-deps

configure: setup
	@cmake -S . -B $(BUILD) -G Ninja $(CMAKE_ARGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

demo: setup
	@cmake -S . -B $(DEMO_BUILD) -G Ninja $(DEMO_CMAKE_ARGS) >/dev/null
	@cmake --build $(DEMO_BUILD) -j $(JOBS) --target flashattn-bench
	@echo "$(DEMO_BUILD)/flashattn-bench $(DEMO_ARGS)"
	@{ $(DEMO_BUILD)/flashattn-bench $(DEMO_ARGS); echo $$? > $(DEMO_BUILD)/demo.rc; } \
	  | tee $(DEMO_BUILD)/demo.txt
	@status=$$(cat $(DEMO_BUILD)/demo.rc); [ "$$status" = 0 ] || exit $$status; \
	if command -v $(PYTHON) >/dev/null 2>&1; then \
	  $(PYTHON) tools/demo_peer.py $(DEMO_BUILD)/demo.txt \
	    || echo "peer: none available (tools/demo_peer.py failed)"; \
	else \
	  echo "peer: none available ($(PYTHON) not found; the peer is torch SDPA)"; \
	fi

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

clean:
	rm -rf $(BUILD) $(BUILD)-cpuonly
