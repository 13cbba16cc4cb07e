"""benchmarks/b2bua.py still measures what it says: each kind of refusal really refused
(its response or silence, its counter, its records, no call), whole calls whole. Small
runs, no timings asserted: a kind broken by a change of the core fails here, not in the
next session's measurement."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "b2bua.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_b2bua", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load()


@pytest.mark.parametrize("kind", list(bench.REFUSALS))
def test_each_kind_of_refusal_is_refused_as_it_says(kind: str) -> None:
    # more than limits.refused_cdr_rps (20): the records of the second and past them
    total, core = bench.run_refused(45, kind)
    assert 0 < core <= total


@pytest.mark.parametrize("kind", ["rate", "unknown", "silenced"])
def test_a_refusal_not_as_expected_stops_the_benchmark(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = bench.REFUSALS[kind]
    wrong = b"SIP/2.0 404 " if r.status is not None else b"SIP/2.0 403 "
    monkeypatch.setitem(bench.REFUSALS, kind, dataclasses.replace(r, status=wrong))
    with pytest.raises(SystemExit, match=kind):
        bench.run_refused(5, kind)


def test_a_refusal_that_admits_a_call_stops_the_benchmark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the trunk's limit gone: the INVITEs become calls
    r = dataclasses.replace(bench.REFUSALS["limit"], extra="", status=b"SIP/2.0 100 ")
    monkeypatch.setitem(bench.REFUSALS, "limit", r)
    with pytest.raises(SystemExit, match="a call was admitted"):
        bench.run_refused(5, "limit")


def test_whole_calls_with_metrics_and_egress() -> None:
    total, core = bench.run(5, egress=True, metrics=True)
    assert 0 < core <= total


def _cli(*args: str) -> str:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_the_command_prints_each_kind_against_a_whole_call() -> None:
    out = _cli("--refused", "all", "--calls", "30", "--runs", "1", "--versus-calls", "3")
    assert "core: per whole call" in out
    for kind in bench.REFUSALS:
        assert f"\n{kind}: " in out
    assert out.count("refusal / whole call") == len(bench.REFUSALS)


def test_refused_without_a_kind_is_the_overload_of_earlier_sessions() -> None:
    out = _cli("--refused", "--calls", "30", "--runs", "1", "--versus-calls", "3")
    assert "\noverload: " in out and out.count("refusal / whole call") == 1
