# Thin wrapper over CMake. The two commands of the README:
#   make demo   build and run flashattn-bench (GPU if present, else the CPU backend), then time
#               the peer the user already has (torch SDPA, when $(PYTHON) imports torch) on the
#               same problem: tools/demo_peer.py
#   make test   build what this machine can run and run every test (GPU tests skip without a GPU)
# Options pass through, e.g.  make test FA_CUDA_ARCHS=all        (every CUDA kernel, any machine)
#                             make test CMAKE_ARGS="-DFA_CUDA=OFF"
#                             make test CMAKE_ARGS="-DFA_HDIMS=128 -DFA_DTYPES=bf16 -DFA_CUDA_ARCHS=80"
#                             make demo DEMO_ARGS="--causal --seqlen 4096"
BUILD ?= build
CMAKE_ARGS ?=
DEMO_ARGS ?=
JOBS ?= $(shell nproc)
PYTHON ?= python3
# The CUDA archs to compile (comma list, or `all`); empty: the default below. The same variable
# selects them for `pip install .` (setup.py).
FA_CUDA_ARCHS ?=

# Which CUDA kernels to build. All of them (two archs x six head dims x two dtypes) ran past 40
# minutes on a 2-core machine, and without a GPU every GPU test skips, so by default a build dir
# gets what the machine can run: the kernels for the archs of the GPUs present (every head dim
# and dtype; scripts/cuda-archs: 8.x -> 80, 9.0 -> 90a), or the CPU library alone when there is
# no GPU. The default applies when a build dir is first configured; later calls keep its CMake
# cache (as they keep FA_HDIMS), so a plain `make test` after an explicit one does not flip the
# build dir to another configuration and recompile it. Explicit options select anything, in any
# build dir: FA_CUDA_ARCHS above, or -DFA_CUDA / -DFA_CUDA_ARCHS in CMAKE_ARGS.
GPU_ARCHS := $(shell scripts/cuda-archs)
ARCHS_NAMED := $(strip $(FA_CUDA_ARCHS) $(filter -DFA_CUDA_ARCHS% FA_CUDA_ARCHS%,$(CMAKE_ARGS)))
CUDA_NAMED := $(strip $(ARCHS_NAMED) $(filter -DFA_CUDA=% -DFA_CUDA:% FA_CUDA=% FA_CUDA:%,$(CMAKE_ARGS)))
ifneq ($(ARCHS_NAMED),)
# Naming archs asks for kernels, also in a build dir cached CPU-only by the default (FA_CUDA=OFF);
# an FA_CUDA in CMAKE_ARGS comes later on the command line and still wins.
CUDA_ARGS := -DFA_CUDA=AUTO $(if $(FA_CUDA_ARCHS),-DFA_CUDA_ARCHS=$(FA_CUDA_ARCHS))
else ifeq ($(CUDA_NAMED),)
ifneq ($(GPU_ARCHS),)
DEFAULT_CUDA_ARGS := -DFA_CUDA_ARCHS=$(GPU_ARCHS)
DEFAULT_NOTE := the CUDA kernels for the GPUs present (FA_CUDA_ARCHS=$(GPU_ARCHS))
else
DEFAULT_CUDA_ARGS := -DFA_CUDA=OFF
DEFAULT_NOTE := the CPU library only (no GPU that the kernels run on)
endif
endif
# $(call cmake_args,<build dir>): the configure options for that build dir.
fresh = $(if $(wildcard $(1)/CMakeCache.txt),,1)
cmake_args = $(CUDA_ARGS) $(if $(call fresh,$(1)),$(DEFAULT_CUDA_ARGS)) $(CMAKE_ARGS)
# A line saying which default a fresh build dir gets (configure output goes to /dev/null).
default_note = $(if $(and $(call fresh,$(1)),$(DEFAULT_NOTE)), \
  echo "make: $(1)/ gets $(DEFAULT_NOTE); every CUDA kernel: FA_CUDA_ARCHS=all",true)

# Without a GPU the demo runs on the CPU backend, so it builds the CPU-only library (seconds) in
# its own build dir, never the CUDA kernels an explicit `make test` option may have put in $(BUILD).
ifneq ($(GPU_ARCHS),)
DEMO_BUILD ?= $(BUILD)
DEMO_CMAKE_ARGS ?= $(call cmake_args,$(DEMO_BUILD))
demo_note = $(call default_note,$(DEMO_BUILD))
else
DEMO_BUILD ?= $(BUILD)-cpuonly
DEMO_CMAKE_ARGS ?= -DFA_CUDA=OFF $(CMAKE_ARGS)
demo_note = true
endif

.PHONY: all setup configure build demo test clean

all: build

setup:
	@scripts/setup-deps

configure: setup
	@$(call default_note,$(BUILD))
	@cmake -S . -B $(BUILD) -G Ninja $(call cmake_args,$(BUILD)) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

demo: setup
	@$(demo_note)
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
