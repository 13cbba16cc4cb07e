"""The import graph of ``sipguard/``: printed, and checked for cycles and layering.

    .venv/bin/python tools/imports.py [--quiet]

Prints every module with the sipguard modules it imports (``~`` marks an import made
only for type checking), then the size of each ``b2bua/`` module. Exits 1 when:

- the modules import each other in a cycle at run time (a type-only import back, from the
  parts of a call to the call they are handed, is no cycle at run time and is allowed
  only where :data:`TYPE_ONLY_BACK` says);
- a layer imports one above it (STYLE.md: ``net`` -> ``b2bua`` -> ``sip``, ``policy``;
  only ``cli`` imports ``net``; ``sip/`` uses the standard library alone).

Run by ``./dev.sh lint``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "sipguard"

# what each layer (the first part below sipguard) may import of sipguard
LAYERS: dict[str, frozenset[str]] = {
    "sip": frozenset({"sip"}),
    # the loader checks numbering plans with policy's functions; config.model imports
    # nothing of sipguard (the cycle check keeps it so: policy imports config.model)
    "config": frozenset({"config", "sip", "policy", "media"}),
    "policy": frozenset({"policy", "config", "sip"}),
    # sip.ids: the CDR ids are drawn from the one CSPRNG source (stdlib only, like all sip/)
    "cdr": frozenset({"cdr", "config", "metrics", "policy", "sip"}),
    "metrics": frozenset(),
    # the ng client and its codec: standard library only
    "media": frozenset({"media", "sip"}),
    "b2bua": frozenset({"b2bua", "media", "sip", "policy", "cdr", "config", "metrics"}),
    "net": frozenset({"net", "b2bua", "media", "sip", "policy", "cdr", "config", "metrics"}),
    "cli": frozenset({"net", "b2bua", "media", "sip", "policy", "cdr", "config", "metrics"}),
    "__main__": frozenset({"cli"}),
}
# type-only imports that point back up a module's importers: a call's parts are handed the
# call and are typed against it; an outcome names the call it is about
TYPE_ONLY_BACK = frozenset(
    {
        ("sipguard.b2bua.host", "sipguard.b2bua.call"),
        ("sipguard.b2bua.leg", "sipguard.b2bua.session_timer"),
        ("sipguard.b2bua.session_timer", "sipguard.b2bua.call"),
        ("sipguard.b2bua.session_timer", "sipguard.b2bua.leg"),
        ("sipguard.b2bua.reliable", "sipguard.b2bua.call"),
        ("sipguard.b2bua.outgoing", "sipguard.b2bua.call"),
        ("sipguard.b2bua.relay", "sipguard.b2bua.call"),
        ("sipguard.b2bua.records", "sipguard.b2bua.call"),
        ("sipguard.b2bua.records", "sipguard.b2bua.admission"),
        ("sipguard.b2bua.media", "sipguard.b2bua.call"),
    }
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """(run-time imports, type-only imports) of sipguard modules in one file."""
    tree = ast.parse(path.read_text(), str(path))
    runtime: set[str] = set()
    typing_only: set[str] = set()

    def visit(nodes: list[ast.stmt], into: set[str]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _type_checking(node):
                visit(node.body, typing_only)
                continue
            for sub in ast.walk(node):
                names: list[str] = []
                if isinstance(sub, ast.Import):
                    names = [a.name for a in sub.names]
                elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                    names = [sub.module] + [f"{sub.module}.{a.name}" for a in sub.names]
                for name in names:
                    if name in modules:
                        into.add(name)

    visit(tree.body, runtime)
    return runtime, typing_only - runtime


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    run: dict[str, set[str]] = {}
    typ: dict[str, set[str]] = {}
    for name, path in sorted(files.items()):
        r, t = imports(path, modules)
        run[name] = {m for m in r if m != name and files[m].name != "__init__.py"}
        typ[name] = {m for m in t if m != name}
    return run, typ


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quiet", action="store_true", help="print only problems and sizes")
    args = ap.parse_args(argv)
    run, typ = graph()
    problems: list[str] = []
    for comp in cycles(run):
        problems.append("import cycle: " + " -> ".join(comp))
    for mod, deps in sorted(typ.items()):
        for dep in sorted(deps):
            back = run.get(dep, set()) | typ.get(dep, set())
            if (mod, dep) not in TYPE_ONLY_BACK and mod in back:
                problems.append(f"type-only cycle not allowed: {mod} <-> {dep}")
    for mod, deps in sorted(run.items()):
        allowed = LAYERS.get(layer(mod))
        if allowed is None:
            continue
        for dep in sorted(deps):
            if layer(dep) not in allowed:
                problems.append(f"layering: {mod} imports {dep}")
    if not args.quiet:
        for mod in sorted(run):
            deps = [d.removeprefix("sipguard.") for d in sorted(run[mod])]
            deps += [f"~{d.removeprefix('sipguard.')}" for d in sorted(typ[mod])]
            print(f"{mod.removeprefix('sipguard.') or 'sipguard'}: {', '.join(deps) or '-'}")
        print()
    print("b2bua/ module sizes (lines):")
    for path in sorted((PKG / "b2bua").glob("*.py")):
        print(f"  {len(path.read_text().splitlines()):5d}  {path.name}")
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print("no import cycle, layers respected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
