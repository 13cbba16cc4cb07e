"""Compile the sans-IO SIP core with mypyc, next to its sources; ``--clean`` undoes it.

    .venv/bin/python benchmarks/mypyc_build.py            # build the .so files in place
    .venv/bin/python benchmarks/mypyc_build.py --clean    # remove them: pure Python again
    .venv/bin/python benchmarks/mypyc_build.py --root DIR # compile the sipguard/ under DIR

The pure-Python modules stay the source of truth: Python imports an extension module
before the ``.py`` of the same name, so removing the ``.so`` files (``--clean``) gives
the pure fallback back. While they are there, an edit of a compiled module's ``.py`` has
no effect until the next build. The modules are compiled as one group,
``sipguard/sip/_native__mypyc*.so`` plus one small shim per module; the C sources and
objects go to ``build/mypyc/`` (both git-ignored). Needs a C compiler and the Python
headers; mypy (with mypyc) is in the ``test`` extra.

setuptools is driven directly rather than through ``python -m mypyc``, which runs a
generated ``setup.py`` in the current directory: that reads ``pyproject.toml``, and the
venv's setuptools (65) refuses its PEP 639 ``license = "Apache-2.0"``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Compiled, in this order of dependency. timers.py and rfc3263.py stay pure Python, as
# does everything outside sipguard/sip; they import the compiled modules like any others.
MODULES = (
    "sipguard/sip/errors.py",
    "sipguard/sip/uri.py",
    "sipguard/sip/message.py",
    "sipguard/sip/framer.py",
    "sipguard/sip/transaction.py",
)
GROUP = "sipguard.sip._native"  # the shared library: sipguard/sip/_native__mypyc*.so
BUILD_DIR = "build/mypyc"


def compiled_files(root: Path) -> list[Path]:
    """The extension modules a build leaves in the source tree."""
    sip = root / "sipguard" / "sip"
    return sorted(p for p in sip.glob("*.so") if p.is_file()) + sorted(sip.glob("*.pyd"))


def clean(root: Path) -> int:
    removed = compiled_files(root)
    for p in removed:
        p.unlink()
    print(f"removed {len(removed)} compiled module(s) from {root / 'sipguard' / 'sip'}")
    return len(removed)


def build(root: Path, opt_level: str = "3") -> float:
    """Compile MODULES under ``root`` in place; return the seconds it took."""
    from mypyc.build import mypycify
    from setuptools import Distribution

    start = time.perf_counter()
    cwd = Path.cwd()
    os.chdir(root)  # mypycify takes paths relative to the tree it compiles
    try:
        exts = mypycify(list(MODULES), opt_level=opt_level, group_name=GROUP, target_dir=BUILD_DIR)
        dist = Distribution({"name": "sipguard-native", "ext_modules": exts})
        cmd = dist.get_command_obj("build_ext")
        cmd.inplace = True  # type: ignore[attr-defined]
        cmd.build_temp = f"{BUILD_DIR}/temp"  # type: ignore[attr-defined]
        cmd.build_lib = f"{BUILD_DIR}/lib"  # type: ignore[attr-defined]
        cmd.parallel = os.cpu_count() or 1  # type: ignore[attr-defined]
        dist.run_command("build_ext")
    finally:
        os.chdir(cwd)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", action="store_true", help="remove the compiled modules")
    ap.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="the tree that holds sipguard/ (default: this repository)",
    )
    ap.add_argument("--opt-level", default="3", help="the C compiler's -O level")
    args = ap.parse_args()
    root = args.root.resolve()
    if args.clean:
        clean(root)
        return 0
    clean(root)  # never mix the modules of two builds
    seconds = build(root, args.opt_level)
    built = compiled_files(root)
    print(f"compiled {len(MODULES)} modules in {seconds:.1f} s:")
    for p in built:
        print(f"  {p.relative_to(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
