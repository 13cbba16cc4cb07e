"""testkit.sipp's environment for sipguard children: this checkout, whatever the venv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from testkit.sipp import REPO, child_env


def imported_from(env: dict[str, str], cwd: Path) -> str:
    code = "import sipguard; print(sipguard.__file__)"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return run.stdout.strip()


def test_a_child_imports_this_checkout_from_any_directory(tmp_path: Path) -> None:
    assert imported_from(child_env(), tmp_path) == str(REPO / "sipguard" / "__init__.py")


def test_a_pythonpath_given_stays_first(tmp_path: Path) -> None:
    other = tmp_path / "copy"
    (other / "sipguard").mkdir(parents=True)
    (other / "sipguard" / "__init__.py").write_text("")
    env = child_env({"PYTHONPATH": str(other)})
    assert env["PYTHONPATH"].split(":") == [str(other), str(REPO)]
    assert imported_from(env, tmp_path) == str(other / "sipguard" / "__init__.py")
