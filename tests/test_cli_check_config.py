"""``sipguard check-config``: exit 0, or exit 2 with one line FILE:LINE: field: message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sipguard.cli import EXIT_CONFIG_ERROR, main
from sipguard.config.loader import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "config" / "sipguard.yaml"
DATA = Path(__file__).resolve().parent / "data" / "config"
BAD = sorted(DATA.glob("bad_*.yaml"))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sipguard", "check-config", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_reference_file_is_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(REFERENCE)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{REFERENCE}: OK (2 trunks)\n"
    assert err == ""


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_broken_file_exits_2_with_one_line(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert main(["check-config", "-c", str(path)]) == EXIT_CONFIG_ERROR == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{info.value}\n"
    assert err.startswith(f"{path}:{info.value.line}: {info.value.field}: ")


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.yaml"
    assert main(["check-config", "-c", str(path)]) == 2
    assert capsys.readouterr().err == f"{path}:0: (file): cannot read: No such file or directory\n"


def test_subprocess_default_path_is_the_reference_file() -> None:
    done = _run()
    assert done.returncode == 0, done.stderr
    assert done.stdout == "config/sipguard.yaml: OK (2 trunks)\n"
    assert done.stderr == ""


def test_subprocess_reference_file() -> None:
    done = _run("-c", str(REFERENCE))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bad_cidr.yaml", "12: trunks.customers.sources[1]: invalid CIDR '10.0.0.0/33'"),
        ("bad_bool_as_int.yaml", "4: limits.emergency_max_calls: expected an integer"),
        ("bad_overlapping_sources.yaml", "9: trunks.pbx.sources[1]: 10.1.2.3/32 overlaps"),
        ("bad_duplicate_key.yaml", "7: trunks.pbx: duplicate key (first at line 3)"),
        ("bad_yaml_syntax.yaml", "7: (yaml): expected ',' or ']'"),
    ],
)
def test_subprocess_broken_file(name: str, expected: str) -> None:
    path = f"tests/data/config/{name}"
    done = _run("-c", path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"{path}:{expected}")
    assert done.stderr.endswith("\n")
    assert done.stderr.count("\n") == 1


def test_subprocess_missing_file() -> None:
    done = _run("-c", "no/such/file.yaml")
    assert done.returncode == 2
    assert done.stderr == "no/such/file.yaml:0: (file): cannot read: No such file or directory\n"
