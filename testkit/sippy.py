"""sipguard side by side with sippy, the Python B2BUA, through the same SIPp runs.

Used by ``python loadtests/run.py --versus-sippy`` (issue 6, "What it must do" 1):

    python loadtests/run.py --versus-sippy --rate 100,150 --duration 20
    python loadtests/run.py --versus-sippy --rate 100,150 --sipguard-only-rates 500,1000

sippy (``pip install sippy``, version 2.5.0 unless ``--sippy-version`` says otherwise;
the latest 2.x if that version cannot be installed) is installed from PyPI into a
temporary venv made with this interpreter (``python -m venv``), which is removed at the
end; ``--sippy-cache DIR`` keeps it in ``DIR/sippy-<version>-py<X.Y>`` for the next run
instead (never inside the repository). Its B2BUA runs as SIPP-NOTES measured it::

    b2bua_radius -f -u -A 0 -l 127.0.0.1 -p PORT -s 127.0.0.2:UAS_PORT -c SOCK

(foreground, no RADIUS authentication, no accounting, every call statically routed to
the SIPp uas; ``-c`` puts its command socket in the run's directory instead of
``/var/run``), with its log level at WARN (``SIPLOG_LVL``) as sipguard's is at
``warning``. It is pinned to core 1 and both SIPp processes to core 0, exactly like
sipguard; the SIPp uac, uas, rates, call counts and call hold time are those of
the load runner's runs (:func:`testkit.load.run_element`), one after the other, in the same process.

For each rate, sippy runs first, then sipguard; one table follows with, per rate and
element: calls attempted, succeeded, failed, the success rate, calls/s achieved, p99
INVITE→200 time, CPU seconds per 1,000 calls (``/proc/PID/stat``, all threads), peak
RSS (``VmHWM``), and on the sipguard row the ratio of its CPU seconds per 1,000 calls
to sippy's. Rates in ``--sipguard-only-rates`` run sipguard alone (sippy fails above
about 150 calls/s), to show the headroom. These are measurements: nothing is asserted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from testkit.floor import FLOOR_LABEL, run_floor_load
from testkit.load import LoadResult, run_load, run_peer, say
from testkit.peer import PeerError, PeerProcess
from testkit.sipp import CALLEE_IP, REPO, SIPGUARD_IP, SIPP, Setup

SIPPY_VERSION = "2.5.0"
SIPPY_FALLBACK = "sippy>=2,<3"
SIPPY_CPU = (1,)  # the core sipguard is pinned to in run.py
SIPPY_SCRIPTS = ("b2bua_radius", "b2bua")
PIP_TIMEOUT_S = 600


# -- installing sippy ------------------------------------------------------------------------


class SippyInstallError(RuntimeError):
    pass


@dataclass
class SippyInstall:
    venv: Path
    requested: str  # the version asked for
    version: str  # the version installed
    command: list[str]  # how to start its B2BUA (before the options)

    @property
    def fell_back(self) -> bool:
        return self.version != self.requested

    @property
    def label(self) -> str:
        return f"sippy {self.version}"


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(venv / "bin" / "python"),
            *("-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _installed_version(venv: Path) -> str | None:
    r = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('sippy'))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def _b2bua_command(venv: Path) -> list[str]:
    """The console script (``b2bua_radius`` per SIPP-NOTES), else the module."""
    for name in SIPPY_SCRIPTS:
        exe = venv / "bin" / name
        if exe.exists() and os.access(exe, os.X_OK):
            return [str(exe)]
    return [str(venv / "bin" / "python"), "-m", "sippy.b2bua"]


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def install_sippy(
    root: Path, version: str = SIPPY_VERSION, *, reuse: bool = False, quiet: bool = False
) -> SippyInstall:
    """sippy ``version`` from PyPI in a new venv under ``root`` (the latest 2.x as fallback).

    With ``reuse``, a venv left under ``root`` by an earlier run for the same version and
    Python is used as it is.
    """
    if _inside(root, REPO):
        raise SippyInstallError(f"the sippy venv must not be inside the repository: {root}")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    venv = root / f"sippy-{version}-py{py}"
    if reuse and (venv / ".complete").exists():
        got = _installed_version(venv)
        if got is not None:
            say(f"sippy {got}: reusing the venv {venv}", quiet)
            return _checked(SippyInstall(venv, version, got, _b2bua_command(venv)))
    if venv.exists():
        shutil.rmtree(venv)
    root.mkdir(parents=True, exist_ok=True)
    say(f"creating a venv for sippy in {venv} …", quiet)
    subprocess.run(
        [sys.executable, "-m", "venv", str(venv)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    say(f"pip install sippy=={version} …", quiet)
    r = _pip(venv, f"sippy=={version}")
    if r.returncode != 0:
        say(
            f"sippy=={version} could not be installed ({_last_line(r.stderr)}); "
            f"trying {SIPPY_FALLBACK!r} …",
            quiet,
        )
        r = _pip(venv, SIPPY_FALLBACK)
        if r.returncode != 0:
            raise SippyInstallError(f"pip install {SIPPY_FALLBACK!r} failed:\n{r.stderr[-4000:]}")
    got = _installed_version(venv)
    if got is None:
        raise SippyInstallError("sippy installed, but its version cannot be read")
    (venv / ".complete").write_text(got + "\n")
    return _checked(SippyInstall(venv, version, got, _b2bua_command(venv)))


def _last_line(text: str) -> str:
    lines = [x for x in text.splitlines() if x.strip() and not x.startswith("WARNING")]
    return lines[-1].strip() if lines else "no output"


def _checked(install: SippyInstall) -> SippyInstall:
    """Check with ``--help`` that this sippy has the options used here."""
    r = subprocess.run(
        [*install.command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    text = r.stdout + r.stderr
    missing = [o for o in ("--static_route", "--sip_address", "--sip_port") if o not in text]
    if missing:
        raise SippyInstallError(
            f"{' '.join(install.command)} --help does not list {', '.join(missing)}:\n"
            f"{text[-2000:]}"
        )
    return install


# -- sippy as the element under test ---------------------------------------------------------


class SippyError(PeerError):
    pass


class Sippy(PeerProcess):
    """sippy's B2BUA as a subprocess, routing every call to the SIPp uas; stopped by PID."""

    name = "sippy"
    error = SippyError
    settle_s = 0.3  # its worker threads

    def __init__(
        self,
        install: SippyInstall,
        setup: Setup,
        *,
        cpus: Sequence[int] | None = None,
        log_level: str = "WARN",
    ) -> None:
        self.install = install
        super().__init__(
            setup,
            [
                *install.command,
                "-f",  # foreground
                "-u",  # no RADIUS authentication
                "-A",
                "0",  # no accounting
                "-l",
                SIPGUARD_IP,
                "-p",
                str(setup.sip_port),
                "-s",
                f"{CALLEE_IP}:{setup.callee_port}",  # the static route: the SIPp uas
                "-c",
                str(setup.workdir / "b2bua.sock"),  # its command socket, not /var/run's
            ],
            cpus=cpus,
            env={**os.environ, "SIPLOG_LVL": log_level, "SIPLOG_BEND": "stderr"},
            log_name="sippy.log",
        )


def lowercase_uas(directory: Path) -> Path:
    """SIPp's built-in ``uas`` scenario (``sipp -sd uas``) with ``transport=udp`` in its Contact.

    The built-in writes ``transport=UDP`` (SIPP-NOTES gotcha 4); sippy 2.5.0 compares the
    value case-sensitively and cannot send the BYE to such a Contact (``RuntimeError: BUG:
    newTransaction() to unsupported transport: UDP``), so the callee never gets the BYE.
    Everything else is the built-in scenario, byte for byte. The file is named ``uas.xml``
    so that SIPp names its trace files as for the built-in.
    """
    # (sipp -sd exits with 99, "normal exit without calls processed")
    text = subprocess.run(
        [SIPP, "-sd", "uas"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    fixed = text.replace(";transport=[transport]>", ";transport=udp>")
    if fixed == text or "<scenario" not in fixed:
        raise SippyError("sipp -sd uas: no Contact with transport=[transport] found")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "uas.xml"
    path.write_text(fixed)
    return path


def callee_byes(workdir: Path) -> int | None:
    """BYEs the SIPp uas received (``4_BYE_Recv`` of its ``-trace_counts`` file): calls
    that ended at the callee too."""
    for path in workdir.glob("uas_*_counts.csv"):
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
        if len(lines) < 2:
            continue
        row = dict(zip(lines[0].split(";"), lines[-1].split(";"), strict=False))
        for key, value in row.items():
            if key.endswith("_BYE_Recv"):
                with contextlib.suppress(ValueError):
                    return int(value)
    return None


def sippy_log_errors(workdir: Path) -> int:
    """Tracebacks sippy logged during a run (``unhandled exception`` lines)."""
    try:
        text = (workdir / "sippy.log").read_text(errors="replace")
    except OSError:
        return 0
    return text.count("unhandled exception")


def run_sippy_load(
    install: SippyInstall,
    rate: float,
    duration_s: float,
    hold_ms: int = 1000,
    *,
    workdir: Path,
    pin: bool = True,
    quiet: bool = False,
    uas_scenario: str | Path = "uas",
) -> LoadResult:
    """One run with sippy as the element (UDP only), pinned where sipguard would be."""
    cpus = SIPPY_CPU if pin else None
    return run_peer(
        lambda setup: Sippy(install, setup, cpus=cpus),
        install.label,
        rate,
        duration_s,
        hold_ms,
        workdir=workdir,
        pin=pin,
        quiet=quiet,
        uas_scenario=uas_scenario,
    )


# -- the side-by-side table -------------------------------------------------------------------


@dataclass
class VersusRow:
    element: str
    result: LoadResult
    callee_byes: int | None = None  # BYEs that reached the SIPp uas
    cpu_ratio: float | None = None  # sipguard's CPU s per 1k calls / sippy's, same rate
    tracebacks: int = 0  # sippy only: unhandled exceptions it logged

    @property
    def success_rate(self) -> float | None:
        r = self.result
        return r.succeeded / r.attempted if r.attempted else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


VERSUS_COLUMNS = (
    ("rate/s", 6),
    ("element", 11),
    ("attempted", 9),
    ("succeeded", 9),
    ("failed", 6),
    ("success", 8),
    ("BYE@uas", 7),
    ("calls/s", 7),
    ("p99 ms", 6),
    ("cpu s/1k", 8),
    ("peak MB", 7),
    ("cpu vs sippy", 12),
)


def _line(cells: Sequence[str]) -> str:
    return "  ".join(
        c.ljust(w) if t == "element" else c.rjust(w)
        for c, (t, w) in zip(cells, VERSUS_COLUMNS, strict=True)
    ).rstrip()


def versus_header() -> str:
    return _line([t for t, _ in VERSUS_COLUMNS])


def versus_row(v: VersusRow) -> str:
    r = v.result
    line = _line(
        (
            f"{r.rate:g}",
            v.element,
            str(r.attempted),
            str(r.succeeded),
            str(r.failed),
            _fmt(None if v.success_rate is None else v.success_rate * 100, ".2f") + "%",
            _fmt(v.callee_byes, "d"),
            f"{r.achieved_cps:.0f}",
            _fmt(r.setup_p99_ms, ".0f"),
            _fmt(r.cpu_s_per_1k, ".3f"),
            f"{r.peak_rss_kb / 1024:.1f}",
            _fmt(v.cpu_ratio, ".3f") if v.cpu_ratio is not None else "",
        )
    )
    notes = []
    if r.failures:
        notes.append(",".join(f"{k.replace('(C)', '')}={n}" for k, n in r.failures.items()))
    if r.udp_drops:
        notes.append(f"udp drops {r.udp_drops}")
    if v.tracebacks:
        notes.append(f"{v.tracebacks} tracebacks in sippy.log")
    return line + ("  " + "; ".join(notes) if notes else "")


def cpu_ratio(sipguard: LoadResult, sippy: LoadResult) -> float | None:
    a, b = sipguard.cpu_s_per_1k, sippy.cpu_s_per_1k
    return a / b if a is not None and b else None


def versus(
    rates: Sequence[float],
    solo: Sequence[float],
    duration_s: float,
    hold_ms: int = 1000,
    *,
    base: Path,
    pin: bool = True,
    repeat: int = 1,
    transport: str = "udp",
    sippy_version: str = SIPPY_VERSION,
    sippy_cache: Path | None = None,
    callee: str = "lowercase",
    floor: bool = False,
    limits: dict[str, int] | None = None,
    as_json: bool = False,
    quiet: bool = False,
) -> int:
    """``run.py --versus-sippy``: install sippy, run both at each rate, print one table.

    ``solo``: rates sipguard alone runs at too; ``callee``: ``lowercase`` (the built-in
    uas with ``transport=udp``, :func:`lowercase_uas`) or ``builtin``; ``floor``: the floor
    relay runs after sipguard at every rate and repeat. Exit status 1 if a sipguard run
    had 0.1% failed calls or more (sippy's failures are reported, not judged), 2 if sippy
    could not be installed or started.
    """
    if transport != "udp":
        print("--versus-sippy runs UDP only (sippy's B2BUA listens on UDP)", file=sys.stderr)
        return 2
    venv_tmp: tempfile.TemporaryDirectory[str] | None = None
    try:
        if sippy_cache is not None:
            root = sippy_cache
        else:
            venv_tmp = tempfile.TemporaryDirectory(prefix="sipguard-sippy-venv-")
            root = Path(venv_tmp.name)
        try:
            install = install_sippy(root, sippy_version, reuse=sippy_cache is not None, quiet=quiet)
        except (SippyInstallError, subprocess.SubprocessError, OSError) as e:
            print(f"sippy could not be installed: {e}", file=sys.stderr)
            return 2
        scenario: str | Path = "uas"
        if callee == "lowercase":
            scenario = lowercase_uas(base / "scenarios")
        note = (
            f" (sippy=={install.requested} could not be installed: the latest 2.x instead)"
            if install.fell_back
            else ""
        )
        print(f"sippy {install.version} from PyPI{note}: {' '.join(install.command)}")
        print(
            "SIPp built-in uac → element → SIPp "
            + (
                "built-in uas with transport=udp in its Contact"
                if callee == "lowercase"
                else "built-in uas (transport=UDP)"
            )
            + f", the same for both; calls held {hold_ms} ms, {duration_s:g} s of "
            "calls per run, UDP"
            + (f"; element on core {SIPPY_CPU[0]}, SIPp on core 0" if pin else "")
        )
        rows: list[VersusRow] = []
        status = 0

        def show(v: VersusRow) -> None:
            rows.append(v)
            print(versus_row(v), flush=True)

        print(versus_header(), flush=True)
        # with --repeat, the pairs are interleaved (sippy, sipguard, sippy, sipguard …): the
        # VM's noise moves both alike, and the summary gives the median ratio of the pairs
        for rate in [*rates, *(r for r in solo if r not in rates)]:
            for i in range(max(1, repeat)):
                sp: LoadResult | None = None
                if rate in rates:
                    try:
                        sp = run_sippy_load(
                            install,
                            rate,
                            duration_s,
                            hold_ms,
                            workdir=base / f"sippy-rate-{rate:g}-{i}",
                            pin=pin,
                            quiet=quiet,
                            uas_scenario=scenario,
                        )
                    except SippyError as e:
                        print(f"sippy could not be run: {e}", file=sys.stderr)
                        return 2
                    wd = Path(sp.workdir)
                    show(VersusRow(install.label, sp, callee_byes(wd), None, sippy_log_errors(wd)))
                sg = run_load(
                    rate,
                    duration_s,
                    hold_ms,
                    workdir=base / f"sipguard-rate-{rate:g}-{i}",
                    pin=pin,
                    quiet=quiet,
                    uas_scenario=scenario,
                    limits=limits,
                )
                ratio = cpu_ratio(sg, sp) if sp is not None else None
                show(VersusRow("sipguard", sg, callee_byes(Path(sg.workdir)), ratio))
                status |= 0 if sg.ok else 1
                if floor:  # what a relay doing no SIP work costs here at this rate
                    fl = run_floor_load(
                        rate,
                        duration_s,
                        hold_ms,
                        workdir=base / f"floor-rate-{rate:g}-{i}",
                        pin=pin,
                        quiet=quiet,
                        uas_scenario=scenario,
                    )
                    ratio = cpu_ratio(fl, sp) if sp is not None else None
                    show(VersusRow(FLOOR_LABEL, fl, callee_byes(Path(fl.workdir)), ratio))
        _summary(rows, install)
        if as_json:
            print(
                json.dumps(
                    [
                        {
                            "element": v.element,
                            "success_rate": v.success_rate,
                            "callee_byes": v.callee_byes,
                            "cpu_ratio_vs_sippy": v.cpu_ratio,
                            "tracebacks": v.tracebacks,
                            **asdict(v.result),
                        }
                        for v in rows
                    ]
                )
            )
        return status
    finally:
        if venv_tmp is not None:
            venv_tmp.cleanup()


def _summary(rows: list[VersusRow], install: SippyInstall) -> None:
    """One line per rate both ran at: the CPU ratio (the median of the pairs, with their
    range, when each ran several times) and both success rates; with ``--floor``, a line
    for the floor relay's ratio to sippy too."""
    by_rate: dict[float, dict[str, list[VersusRow]]] = {}
    for v in rows:
        by_rate.setdefault(v.result.rate, {}).setdefault(v.element, []).append(v)
    for rate, runs in by_rate.items():
        sps, sgs = runs.get(install.label, []), runs.get("sipguard", [])
        ratios = [v.cpu_ratio for v in sgs if v.cpu_ratio is not None]
        if sps and ratios:
            spread = (
                f" (median of {len(ratios)} pairs, {min(ratios):.3f} to {max(ratios):.3f})"
                if len(ratios) > 1
                else ""
            )
            print(
                f"{rate:g} calls/s: sipguard/{install.label} CPU s per 1,000 calls = "
                f"{statistics.median(ratios):.3f}{spread}; calls succeeded"
                f"{' (lowest run)' if len(ratios) > 1 else ''}: sipguard {_lowest(sgs)}, "
                f"{install.label} {_lowest(sps)}"
            )
        fls = runs.get(FLOOR_LABEL, [])
        floor = [v.cpu_ratio for v in fls if v.cpu_ratio is not None]
        if sps and floor:
            print(
                f"{rate:g} calls/s: {FLOOR_LABEL} (no SIP work)/{install.label} CPU s per "
                f"1,000 calls = {statistics.median(floor):.3f}"
                + (f" (median of {len(floor)})" if len(floor) > 1 else "")
                + f"; calls succeeded: {_lowest(fls)}"
            )


def _lowest(vs: list[VersusRow]) -> str:
    """The lowest success rate of ``vs``, as a percentage."""
    rates = [v.success_rate for v in vs if v.success_rate is not None]
    return "-" if not rates else f"{min(rates) * 100:.2f}%"
