"""Compile sipguard's per-message path with mypyc; the pure-Python sources stay as they are.

    .venv/bin/python tools/build_native.py --out build/native   # a compiled copy there
    .venv/bin/python tools/build_native.py                       # the .so files in place
    .venv/bin/python tools/build_native.py --clean               # remove them: pure again
    .venv/bin/python tools/build_native.py --root DIR            # compile the sipguard/ under DIR

``--out DIR`` is what ``./dev.sh run``, the load runner and the container image use: a copy
of ``sipguard/`` under ``DIR`` with the compiled modules beside their sources, rebuilt only
when a source changed (``DIR/.sources``: a hash of them). ``PYTHONPATH=DIR`` runs it; the
tree itself stays pure Python, so an edit is never hidden by a stale compiled module.

In place (no ``--out``), Python imports an extension module before the ``.py`` of the same
name, so removing the ``.so`` files (``--clean``, or ``git clean -X``) gives the pure
fallback back. The modules are compiled as one group, ``sipguard/_native__mypyc*.so`` plus
one small shim per module; the C sources and objects go to ``build/mypyc/`` under the tree
compiled (git-ignored). Needs a C compiler, the Python headers and mypy (which brings
mypyc: the ``native`` and ``test`` extras).

setuptools is driven directly rather than through ``python -m mypyc``, which runs a
generated ``setup.py`` that reads ``pyproject.toml``: that is both slower and tied to the
installed setuptools understanding the project's metadata.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

# Compiled, in this order of dependency: the per-message path (with the CDR record, built
# for every call, and the driver's per-message part, net/pump.py). rfc3263.py, the rest of
# the driver (net/), the configuration loader, the metrics and the CDR writer and sinks
# stay pure Python; they import the compiled modules like any others.
MODULES = (
    "sipguard/sip/errors.py",
    "sipguard/sip/uri.py",
    "sipguard/sip/message.py",
    "sipguard/sip/framer.py",
    "sipguard/sip/timers.py",
    "sipguard/sip/ids.py",
    "sipguard/sip/transaction.py",
    "sipguard/policy/numbers.py",
    "sipguard/policy/decision.py",
    "sipguard/policy/headers.py",
    "sipguard/policy/body.py",
    "sipguard/policy/egress.py",
    "sipguard/media/bencode.py",
    "sipguard/media/ng.py",
    "sipguard/cdr/record.py",
    "sipguard/b2bua/identity.py",
    "sipguard/b2bua/overload.py",
    "sipguard/b2bua/host.py",
    "sipguard/b2bua/media.py",
    "sipguard/b2bua/peers.py",
    "sipguard/b2bua/gate.py",
    "sipguard/b2bua/shed.py",
    "sipguard/b2bua/table.py",
    "sipguard/b2bua/leg.py",
    "sipguard/b2bua/session_timer.py",
    "sipguard/b2bua/crossing.py",
    "sipguard/b2bua/routing.py",
    "sipguard/b2bua/bleg.py",
    "sipguard/b2bua/admission.py",
    "sipguard/b2bua/records.py",
    "sipguard/b2bua/unread.py",
    "sipguard/b2bua/reliable.py",
    "sipguard/b2bua/relay.py",
    "sipguard/b2bua/outgoing.py",
    "sipguard/b2bua/call.py",
    "sipguard/b2bua/egress.py",
    "sipguard/b2bua/core.py",
    "sipguard/net/pump.py",
)
GROUP = "sipguard._native"  # the shared library: sipguard/_native__mypyc*.so
BUILD_DIR = "build/mypyc"


def compiled_files(root: Path) -> list[Path]:
    """The extension modules a build leaves in the source tree."""
    pkg = root / "sipguard"
    return sorted(p for ext in ("*.so", "*.pyd") for p in pkg.rglob(ext) if p.is_file())


def clean(root: Path) -> int:
    removed = compiled_files(root)
    for p in removed:
        p.unlink()
    print(f"removed {len(removed)} compiled module(s) from {root / 'sipguard'}")
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


def sources_hash(root: Path, opt_level: str = "3") -> str:
    """What a build is made from: every source of the package under ``root``, this script
    (its module list), the optimisation level, the mypy that compiles and the Python ABI."""
    import mypy.version

    digest = hashlib.sha256()
    for part in (opt_level, mypy.version.__version__, sysconfig.get_config_var("EXT_SUFFIX")):
        digest.update(f"{part}\0".encode())
    digest.update(Path(__file__).read_bytes() + b"\0")
    pkg = root / "sipguard"
    for path in sorted(pkg.rglob("*.py")):
        digest.update(str(path.relative_to(pkg)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def is_complete(tree: Path) -> bool:
    """Every module of :data:`MODULES` has its extension module under ``tree``."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    group = any((tree / "sipguard").glob("_native__mypyc*"))  # the shared library
    return group and all((tree / module).with_suffix(suffix).exists() for module in MODULES)


def build_out(src: Path, out: Path, opt_level: str = "3") -> bool:
    """A compiled copy of ``src/sipguard`` under ``out``, unless it is current; True if built.

    One builder at a time (a lock file). The copy is built beside the one in use and
    swapped in by two renames; a failed build or swap leaves the old copy in place.
    ``out/.sources`` says what the copy in use was built from. A process already running
    from ``out`` keeps the modules it loaded; one that imports a module for the first
    time during the swap may fail: rebuild while nothing runs from ``out``.
    """
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = out / ".sources"
        wanted = sources_hash(src, opt_level)
        current = out / "sipguard"
        if stamp.exists() and stamp.read_text() == wanted and is_complete(out):
            return False
        for stale in [*out.glob(".build-*"), *out.glob(".old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a builder that was killed
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
        old = out / f".old-{work.name[len('.build-') :]}"
        try:
            skip = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd")
            shutil.copytree(src / "sipguard", work / "sipguard", ignore=skip)
            build(work, opt_level)
            if not is_complete(work):
                raise RuntimeError(f"the build left modules uncompiled under {work}")
            stamp.unlink(missing_ok=True)
            if current.exists():
                current.rename(old)  # the copy in use moves aside (loaded modules stay)
            try:
                (work / "sipguard").rename(current)
            except OSError:
                if old.exists():
                    old.rename(current)  # put the old copy back
                raise
            stamp.write_text(wanted)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", action="store_true", help="remove the compiled modules")
    ap.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="the tree that holds sipguard/ (default: this repository)",
    )
    ap.add_argument("--out", type=Path, help="build a compiled copy of sipguard/ under OUT")
    ap.add_argument("--opt-level", default="3", help="the C compiler's -O level")
    args = ap.parse_args()
    root = args.root.resolve()
    if args.out is not None:
        start = time.perf_counter()
        out = args.out.resolve()
        if build_out(root, out, args.opt_level):
            took = time.perf_counter() - start
            print(f"compiled {len(MODULES)} modules into {out} in {took:.1f} s")
        else:
            print(f"{out}: compiled modules are current")
        return 0
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
