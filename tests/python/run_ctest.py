#!/usr/bin/env python3
"""ctest entry point for the Python suite (CMakeLists.txt adds it as `python_tests`).

Runs pytest on tests/python when torch, pytest and an installed flashattn package are importable;
otherwise prints what is missing and exits 77, which ctest reports as skipped (CI has no torch).
Extra arguments go to pytest.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SKIP_RETURN_CODE = 77


def main() -> int:
    missing = [name for name in ("torch", "pytest", "flashattn")
               if importlib.util.find_spec(name) is None]
    if missing:
        print(f"python_tests skipped: {', '.join(missing)} not importable "
              "(install torch and pytest, then `pip install --no-build-isolation .`)")
        return SKIP_RETURN_CODE
    here = Path(__file__).resolve().parent
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-rs", str(here), *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
