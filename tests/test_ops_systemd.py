"""The systemd unit, sysusers.d and tmpfiles.d snippets of ``deploy/systemd/``.

``systemd-analyze verify`` needs the unit's binaries to exist. The unit names the
installed path (``/opt/sipguard/bin/sipguard``), so the test verifies a copy in a
temporary folder whose ``ExecStart``/``ExecReload`` name this checkout's
``.venv/bin/sipguard`` instead: every other line is verified as it is shipped.

No systemd runs here as PID 1, so the sandbox itself cannot be started; what it denies
that sipguard could plausibly need is tried directly: sipguard carries SIPp calls under
``PR_SET_MDWE`` (the kernel mechanism of ``MemoryDenyWriteExecute=``).
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sipguard.config.model import Config
from testkit import sipp as sipp_harness
from testkit.sipp import Sipguard, running, sipp_available, uac, uas, write_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "systemd"
UNIT = DEPLOY / "sipguard.service"
INSTALLED = "/opt/sipguard/bin/sipguard"
ANALYZE = shutil.which("systemd-analyze")
CDR_WRITER_CLOSE_S = 10.0  # sipguard.net.server: writer.aclose(10.0) after the drain
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def service() -> dict[str, list[str]]:
    """The [Service] section: every value of every key, in order."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def local_copy(tmp_path: Path) -> Path:
    exe = REPO / ".venv" / "bin" / "sipguard"
    if not exe.exists():
        pytest.skip("no .venv/bin/sipguard to stand in for the installed one")
    text = UNIT.read_text()
    assert INSTALLED in text
    copy = tmp_path / "sipguard.service"
    copy.write_text(text.replace(INSTALLED, str(exe)))
    return copy


@needs_analyze
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "verify", str(local_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == "", done.stdout + done.stderr


@needs_analyze
def test_the_units_exposure_is_low(tmp_path: Path) -> None:
    assert ANALYZE is not None
    done = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(local_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for sipguard.service: ([0-9.]+) (\w+)", done.stdout)
    assert m is not None, done.stdout + done.stderr
    assert float(m.group(1)) <= 2.0, done.stdout  # "OK" is up to 2.0


def test_the_unit_has_the_hardening_a_network_daemon_should_have() -> None:
    s = service()
    assert s["User"] == ["sipguard"] and s["Group"] == ["sipguard"]
    assert s["CapabilityBoundingSet"] == [""] and s["AmbientCapabilities"] == [""]
    assert s["ProtectSystem"] == ["strict"]
    # writable: only the CDR folder (and the PostgreSQL sink's spool, if there is one)
    assert s["ReadWritePaths"] == ["/var/lib/sipguard/cdr -/var/lib/sipguard/cdr-spool"]
    for key in (
        "NoNewPrivileges",
        "PrivateTmp",
        "MemoryDenyWriteExecute",
        "ProtectHome",
        "PrivateDevices",
    ):
        assert s[key] == ["yes"], key
    assert s["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert s["SystemCallFilter"][0] == "@system-service"
    assert s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["2"]  # a configuration error
    assert s["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert s["ExecStart"] == [f"{INSTALLED} run -c /etc/sipguard/sipguard.yaml"]
    # SIGTERM: the drain, then the CDR writer's close, with room to spare
    drain = Config.__dataclass_fields__["drain_seconds"].default
    assert isinstance(drain, float)
    assert float(s["TimeoutStopSec"][0]) > drain + CDR_WRITER_CLOSE_S + 5


def test_the_unit_parses_as_ini() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    assert parser["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_and_tmpfiles_make_the_user_and_the_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).write_text("")
    subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(DEPLOY / "sipguard.sysusers.conf")],
        check=True,
        capture_output=True,
        timeout=30,
    )
    users = {x.split(":")[0]: x.split(":") for x in (root / "etc/passwd").read_text().splitlines()}
    assert users["sipguard"][5:] == ["/var/lib/sipguard", "/usr/sbin/nologin"]
    if os.geteuid() != 0:
        return  # tmpfiles must chown to the new user
    subprocess.run(
        ["systemd-tmpfiles", "--create", f"--root={root}", str(DEPLOY / "sipguard.tmpfiles.conf")],
        check=True,
        capture_output=True,
        timeout=30,
    )
    uid = int(users["sipguard"][2])
    modes = {
        "var/lib/sipguard/cdr": 0o750,
        "var/lib/sipguard/cdr-spool": 0o700,
        "etc/sipguard": 0o750,
    }
    for path, mode in modes.items():
        st = (root / path).stat()
        assert st.st_mode & 0o777 == mode, path
        assert (st.st_uid == uid) != path.startswith("etc"), path  # /etc/sipguard: root's


def _mdwe_supported() -> bool:
    """Whether this kernel has PR_SET_MDWE (Linux 6.3), tried in a child process."""
    probe = f"import ctypes; ctypes.CDLL(None).prctl({PR_SET_MDWE}, 1, 0, 0, 0) == 0 or exit(1)"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


# Sets MDWE (inherited through execve), then runs the program given.
MDWE_EXEC = f"""
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0):
    sys.exit("PR_SET_MDWE failed: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""
# Tries to make memory writable and executable: refused under MDWE.
WX_PROBE = """
import mmap, sys
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    sys.exit(3)
"""


@pytest.mark.sipp
@pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) is not installed")
@pytest.mark.skipif(sys.platform != "linux" or not _mdwe_supported(), reason="no PR_SET_MDWE")
@pytest.mark.timeout(60)
def test_sipguard_needs_no_writable_executable_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``MemoryDenyWriteExecute=yes`` denies, denied by the kernel: sipguard (CPython,
    uvloop, the sources or the mypyc build, whichever this checkout runs) carries calls."""
    probe = subprocess.run(
        [sys.executable, "-c", MDWE_EXEC, sys.executable, "-c", WX_PROBE], check=False
    )
    assert probe.returncode == 3  # the wrapper works: W+X memory is refused after exec
    command = sipp_harness.sipguard_command()
    monkeypatch.setattr(
        sipp_harness,
        "sipguard_command",
        lambda: [sys.executable, "-c", MDWE_EXEC, *command],
    )
    setup = write_config(tmp_path)
    sipguard = Sipguard(setup)
    callee = uas(setup, calls=20, timeout_s=20, trace_msg=False)
    caller = uac(setup, calls=20, rate=20, hold_ms=200, timeout_s=15, trace_msg=False)
    with running(callee, sipguard):
        sipguard.start()
        callee.start()
        callee.wait_listening()
        result = caller.run()
        callee.wait(10)
        code = sipguard.stop()
    assert result.successful == 20, result.describe() + sipguard.log_tail()
    assert code == 0, sipguard.log_tail()
