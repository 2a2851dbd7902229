"""Builds the `flashattn` Python package: the C++ library through CMake, then the torch adapter.

    pip install --no-build-isolation .

1. The library (CMake target `flashattn`, a static PIC archive) is configured with
   `-DFA_BUILD_TESTS=OFF -DFA_BUILD_TOOLS=OFF` in `build-py/cmake-<cuda|cpu>/`. CUDA kernels are
   built when torch has CUDA, nvcc is found and a GPU is present, for the archs of the GPUs
   present (as torch's own extensions do without TORCH_CUDA_ARCH_LIST; scripts/cuda-archs maps
   capabilities to archs); else the library is the CPU backend only.
   Environment: MAX_JOBS (parallel jobs), FA_HDIMS / FA_DTYPES (comma lists, passed to CMake),
   FA_CUDA_ARCHS (a comma list or `all`: these archs, GPU or not), FLASHATTN_CUDA=0/1 (force the
   choice; 1 without a GPU builds every arch), FA_CUTLASS_INCLUDE (headers).
2. FLASHATTN_PREBUILT_DIR=<a CMake build dir> skips step 1 and links the `libflashattn.a` found
   there (used where compiling the kernels would take too long: build the library once, carry
   the archive, compile only the adapter).
3. The adapter (csrc/torch/) is compiled by torch's BuildExtension into `flashattn._C` and linked
   against the archive. The archive's CUDA objects are linked against the shared CUDA runtime
   (libcudart.so, as every torch CUDA extension is), not the static one CMake uses for the
   library's own executables, so the process keeps one CUDA runtime: torch's.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as e:  # pragma: no cover - a clear message instead of a traceback
    raise SystemExit(
        "flashattn needs torch at build time: install torch first, then "
        "`pip install --no-build-isolation .`") from e

ROOT = Path(__file__).parent.resolve()
BUILD_BASE = "build-py"


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.lower() not in ("0", "off", "false", "no")


def _nvcc() -> str | None:
    if CUDA_HOME is not None:
        candidate = Path(CUDA_HOME) / "bin" / "nvcc"
        if candidate.exists():
            return str(candidate)
    return shutil.which("nvcc")


def _gpu_archs() -> str:
    """FA_CUDA_ARCHS for the GPUs present ("" when there is none the kernels run on): torch's
    view of the devices first, nvidia-smi's (inside scripts/cuda-archs) when torch sees none
    (a driver too old for torch's CUDA, say). scripts/cuda-archs also serves `make`, so the two
    defaults cannot drift apart."""
    caps = []
    if torch.cuda.is_available():
        caps = ["%d.%d" % torch.cuda.get_device_capability(i)
                for i in range(torch.cuda.device_count())]
    out = subprocess.run(["bash", str(ROOT / "scripts" / "cuda-archs"), *caps],
                         stdout=subprocess.PIPE, text=True, check=True)
    return out.stdout.strip()


def _cuda_build() -> tuple[bool, str | None]:
    """Whether the adapter and library are compiled with CUDA, and the FA_CUDA_ARCHS to pass.

    Compiling every kernel for every arch takes most of an hour on a small machine, so the
    default builds what this machine can run: the archs of its GPUs, or no CUDA at all without
    one (CUDA tensors then raise NotImplementedError, as with a CPU-only torch). FA_CUDA_ARCHS
    or FLASHATTN_CUDA=1 select kernels explicitly (to build for other machines), and a prebuilt
    archive decides for itself (_library checks it)."""
    forced = _env_flag("FLASHATTN_CUDA")
    available = torch.version.cuda is not None and _nvcc() is not None
    if forced is True and not available:
        raise SystemExit("FLASHATTN_CUDA=1 but torch has no CUDA or nvcc was not found")
    if forced is False or not available:
        return False, None
    if os.environ.get("FLASHATTN_PREBUILT_DIR"):
        return True, None  # nothing to compile; the archive has what it has
    if os.environ.get("FA_CUDA_ARCHS"):
        return True, os.environ["FA_CUDA_ARCHS"]
    archs = _gpu_archs()
    if archs:
        print(f"flashattn: building the CUDA kernels for the GPUs present: FA_CUDA_ARCHS={archs} "
              "(every arch: FA_CUDA_ARCHS=all)", flush=True)
        return True, archs
    if forced is True:
        return True, "all"
    print("flashattn: no GPU the kernels run on: building the CPU backend only "
          "(CUDA kernels: FA_CUDA_ARCHS=all)", flush=True)
    return False, None


def _jobs() -> str:
    return os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)


def _archive_has_cuda(lib: Path) -> bool:
    """A library built with FA_CUDA=ON registers fat binaries with the CUDA runtime."""
    with open(lib, "rb") as f:
        return b"__cudaRegisterFatBinary" in f.read()


def _cmake_build(cuda: bool) -> Path:
    build_dir = ROOT / BUILD_BASE / ("cmake-cuda" if cuda else "cmake-cpu")
    args = ["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
            "-DFA_BUILD_TESTS=OFF", "-DFA_BUILD_TOOLS=OFF", f"-DFA_CUDA={'ON' if cuda else 'OFF'}"]
    if shutil.which("ninja"):
        args += ["-G", "Ninja"]
    for name in ("FA_HDIMS", "FA_DTYPES", "FA_CUTLASS_INCLUDE"):
        if os.environ.get(name):
            args.append(f"-D{name}={os.environ[name]}")
    if cuda:
        # Always passed, so the cached build dir follows this install, not an earlier one.
        args.append(f"-DFA_CUDA_ARCHS={CUDA_ARCHS}")
        args.append(f"-DCMAKE_CUDA_COMPILER={_nvcc()}")
        cutlass = Path(os.environ.get("FA_CUTLASS_INCLUDE", ROOT / ".deps" / "cutlass" / "include"))
        if not (cutlass / "cute" / "tensor.hpp").exists():
            # The project's own step: the pinned nvidia-cutlass wheel's headers into .deps/.
            print("flashattn: CUTLASS headers missing, running scripts/setup-deps", flush=True)
            subprocess.check_call(["bash", str(ROOT / "scripts" / "setup-deps")])
    subprocess.check_call(args)
    subprocess.check_call(["cmake", "--build", str(build_dir), "--target", "flashattn",
                           "-j", _jobs()])
    return build_dir / "libflashattn.a"


def _library(cuda: bool) -> Path:
    prebuilt = os.environ.get("FLASHATTN_PREBUILT_DIR")
    if prebuilt:
        lib = Path(prebuilt).resolve() / "libflashattn.a"
        if not lib.exists():
            raise SystemExit(f"FLASHATTN_PREBUILT_DIR: {lib} does not exist")
        if _archive_has_cuda(lib) and not cuda:
            raise SystemExit(f"{lib} contains CUDA kernels but the extension is built without "
                             "CUDA (torch without CUDA, or no nvcc): rebuild it with -DFA_CUDA=OFF")
        print(f"flashattn: linking prebuilt {lib}", flush=True)
        return lib
    return _cmake_build(cuda)


# std::ostream::_M_insert<long>: defined only inside libstdc++ itself.
_LIBSTDCXX_PROBE = "_ZNSo9_M_insertIlEERSoT_"


def _check_no_private_libstdcxx(so_path: str) -> None:
    """Fails the build if the extension carries its own copy of libstdc++.

    Seen on a GPU image: the extension linked there defined libstdc++'s iostream internals
    itself, so torch's shared libstdc++ and that private copy both served one process, and the
    first ostream formatting of an integer (any error message with a shape in it) crashed. The
    extension must use the process's shared libstdc++; an extension built elsewhere and copied
    over (docs/python.md) avoids that toolchain.
    """
    nm = shutil.which("nm")
    if nm is None:
        return
    out = subprocess.run([nm, "-D", "--defined-only", so_path], capture_output=True, text=True)
    if out.returncode == 0 and _LIBSTDCXX_PROBE in out.stdout:
        raise SystemExit(
            f"{so_path} defines libstdc++ internals ({_LIBSTDCXX_PROBE}): it was linked with a "
            "static libstdc++ (check LDFLAGS/CXX), which crashes next to torch's shared one")


class BuildWithLibrary(BuildExtension):
    """BuildExtension that first builds (or finds) libflashattn.a and links it in."""

    def build_extensions(self) -> None:
        lib = _library(TORCH_CUDA)
        for ext in self.extensions:
            ext.extra_objects = list(ext.extra_objects or []) + [str(lib)]
            ext.depends = list(ext.depends or []) + [str(lib)]
        super().build_extensions()
        for ext in self.extensions:
            _check_no_private_libstdcxx(self.get_ext_fullpath(ext.name))


def _drop_static_libstdcxx() -> None:
    """A second, private libstdc++ next to torch's breaks iostreams (see
    _check_no_private_libstdcxx), so -static-libstdc++ in LDFLAGS is dropped. Done before
    setup() because setuptools reads LDFLAGS when it configures the compiler."""
    flags = os.environ.get("LDFLAGS", "").split()
    if "-static-libstdc++" in flags:
        print("flashattn: ignoring -static-libstdc++ from LDFLAGS", flush=True)
        os.environ["LDFLAGS"] = " ".join(f for f in flags if f != "-static-libstdc++")


def _use_toolchain_with_shared_libstdcxx() -> None:
    """The other way to end up with a private libstdc++: a CXX whose toolchain ships only the
    static libstdc++.a (seen on the project's GPU image: CXX=/opt/gcc/bin/g++), so `-lstdc++`
    silently links it statically. Ask the compiler where its shared libstdc++ is; if it has
    none, build with the system compiler instead (the one torch's own libstdc++ comes from)."""
    cxx = os.environ.get("CXX")
    if not cxx:
        return
    try:
        found = subprocess.run([cxx, "-print-file-name=libstdc++.so"], capture_output=True,
                               text=True, check=False).stdout.strip()
    except OSError:
        return
    if os.path.isabs(found):
        return
    for cxx_fallback, cc_fallback in (("/usr/bin/g++", "/usr/bin/gcc"), ("/usr/bin/c++", "/usr/bin/cc")):
        if os.path.exists(cxx_fallback):
            print(f"flashattn: CXX={cxx} has no shared libstdc++; building with {cxx_fallback}",
                  flush=True)
            os.environ["CXX"] = cxx_fallback
            os.environ["CC"] = cc_fallback
            return


_drop_static_libstdcxx()
_use_toolchain_with_shared_libstdcxx()
TORCH_CUDA, CUDA_ARCHS = _cuda_build()
Extension = CUDAExtension if TORCH_CUDA else CppExtension
ext_modules = [
    Extension(
        "flashattn._C",
        sources=["csrc/torch/flashattn_ops.cpp"],
        include_dirs=[str(ROOT / "include")],
        define_macros=[("FLASHATTN_TORCH_CUDA", "1")] if TORCH_CUDA else [],
        extra_compile_args={"cxx": ["-O2"]},
    )
]

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildWithLibrary.with_options(use_ninja=shutil.which("ninja") is not None)},
    options={"build": {"build_base": BUILD_BASE}},
)
