"""sipguard and SIPp as processes on loopback: the SIPp integration tests and the load runner.

Everything runs on loopback with one address per role (SIPP-NOTES, issue 3):

* the caller (SIPp uac, trunk ``customers``) on ``127.0.0.3``,
* sipguard on ``127.0.0.1``,
* the callee (SIPp uas, trunk ``pbx``) on ``127.0.0.2``.

What is here:

* :func:`free_port` and :func:`write_config` — a sipguard configuration for one test
  (its own SIP, metrics and callee ports, its own CDR directory);
* :class:`Sipguard` — sipguard as a subprocess: started, awaited until ``/healthz``
  answers, stopped by its PID (SIGTERM, then SIGKILL), with CPU and memory read from
  ``/proc/PID``;
* :class:`Sipp` — one SIPp process (built-in scenario or an XML file), always bounded by
  ``-m``, ``-timeout`` and a ``timeout`` wrapper, stopped by its PID; its result
  (:class:`SippResult`) is parsed from the ``-trace_stat`` CSV, the exit code and the
  ``-trace_rtt`` file;
* :func:`read_cdrs` and :func:`scrape_metrics`.

Every child process is started with ``PR_SET_PDEATHSIG`` so that it gets SIGTERM if the
test process itself dies; tests still stop every process they start by its PID.

This module is imported explicitly by the tests that need it (it is not a conftest) and
by the load runner's measuring library (:mod:`testkit.load`).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "sipp-scenarios"
DATA = REPO / "tests" / "data" / "sipp"

CALLER_IP = "127.0.0.3"
SIPGUARD_IP = "127.0.0.1"
CALLEE_IP = "127.0.0.2"
DIALLED = "0201234567"  # a national number: +31201234567 after normalisation

SIPP = shutil.which("sipp") or "/usr/bin/sipp"
TIMEOUT = shutil.which("timeout") or "/usr/bin/timeout"
TASKSET = shutil.which("taskset")


def sipp_available() -> bool:
    return os.path.exists(SIPP) and os.access(SIPP, os.X_OK)


def sipguard_command() -> list[str]:
    """How to start sipguard: the venv's entry point, or this interpreter's module."""
    exe = REPO / ".venv" / "bin" / "sipguard"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "sipguard"]


# -- child processes -----------------------------------------------------------------------


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a sipguard child: ours, ``env`` over it, and this checkout on
    ``PYTHONPATH`` after what is there (a compiled copy set by the load runner stays
    first). Without it, ``python -m sipguard`` from another directory imports whatever
    checkout the venv was installed from: a git worktree would test another branch."""
    out = {**os.environ, **(env or {})}
    paths = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO) not in paths:
        paths.append(str(REPO))
    out["PYTHONPATH"] = os.pathsep.join(paths)
    return out


_PR_SET_PDEATHSIG = 1


def child_setup(cpus: Sequence[int] | None) -> Any:
    """preexec_fn: die with the parent; optionally pin to ``cpus``."""

    def setup() -> None:
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if cpus is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, set(cpus))

    return setup


def pin_prefix(cpus: Sequence[int] | None) -> list[str]:
    """``taskset -c N`` (it execs the program, so the PID stays the program's)."""
    if cpus is None or TASKSET is None or not _cpus_exist(cpus):
        return []
    return [TASKSET, "-c", ",".join(str(c) for c in cpus)]


def _cpus_exist(cpus: Sequence[int]) -> bool:
    try:
        avail = os.sched_getaffinity(0)
    except OSError:  # pragma: no cover
        return False
    return all(c in avail for c in cpus)


def stop_pid(proc: subprocess.Popen[Any], grace: float = 5.0) -> int | None:
    """SIGTERM ``proc`` by its PID, wait ``grace`` seconds, then SIGKILL. Its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    try:
        return proc.wait(5.0)
    except subprocess.TimeoutExpired:  # pragma: no cover - a zombie we cannot reap
        return None


def stop_foreign_pid(pid: int, sig: int, grace: float = 30.0, step: float = 0.05) -> None:
    """Send ``sig`` to a process by its PID (one not started as a child here, so not
    waitable), wait up to ``grace`` seconds for it to go, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(step)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# -- ports ---------------------------------------------------------------------------------

_handed_out: set[int] = set()


def free_port(*hosts: str) -> int:
    """A port free for both UDP and TCP on every one of ``hosts`` (default 127.0.0.1).

    The kernel picks an ephemeral TCP port; it is then checked for UDP and on the other
    hosts. Ports handed out earlier in this process are not handed out again.
    """
    hosts = hosts or (SIPGUARD_IP,)
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        if port in _handed_out or not _bindable(port, hosts):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found")


def _bindable(port: int, hosts: Sequence[str]) -> bool:
    socks: list[socket.socket] = []
    try:
        for host in hosts:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


# -- configuration -------------------------------------------------------------------------


@dataclass
class Setup:
    """One sipguard configuration written for one test."""

    config_path: Path
    workdir: Path
    cdr_dir: Path
    sip_port: int
    metrics_port: int
    callee_port: int
    transport: str
    config: dict[str, Any]

    @property
    def sipguard_addr(self) -> str:
        return f"{SIPGUARD_IP}:{self.sip_port}"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def base_config(
    *,
    sip_port: int,
    metrics_port: int,
    callee_port: int,
    cdr_dir: Path,
    target_transport: str = "udp",
) -> dict[str, Any]:
    """The production-like configuration of the smoke run (SPEC §5), on test ports.

    Privacy enforcement is on (an untrusted customer trunk with ``allowed_cli``, a
    trusted PBX trunk) and CDRs go to the file sink. No per-trunk cps limit, so load
    tests are limited only by sipguard.
    """
    target = f"sip:{CALLEE_IP}:{callee_port}"
    if target_transport != "udp":
        target += f";transport={target_transport}"
    return {
        "listen": [
            {"transport": "udp", "address": SIPGUARD_IP, "port": sip_port},
            {"transport": "tcp", "address": SIPGUARD_IP, "port": sip_port},
        ],
        "metrics": {"address": SIPGUARD_IP, "port": metrics_port},
        "identity_domain": "sip.example.net",
        "emergency_numbers": ["112", "911"],
        "cdr": {"sink": "file", "path": str(cdr_dir), "retention_days": 92},
        "limits": {"max_calls": 20000, "emergency_max_calls": 200},
        "drain_seconds": 2,
        "log_level": "info",
        "trunks": {
            "customers": {
                "sources": [f"{CALLER_IP}/32"],
                "trusted": False,
                "route_to": "pbx",
                "presentation": "allowed",
                "allowed_cli": ["+3120123*"],
                "default_cli": "+31201234000",
                "numbering": {
                    "country_code": "31",
                    "national_prefix": "0",
                    "international_prefix": "00",
                },
            },
            "pbx": {
                "sources": [f"{CALLEE_IP}/32"],
                "trusted": True,
                "targets": [target],
                "route_to": "customers",
            },
        },
    }


def write_config(
    workdir: Path,
    *,
    target_transport: str = "udp",
    overrides: dict[str, Any] | None = None,
    sip_port: int | None = None,
    metrics_port: int | None = None,
    callee_port: int | None = None,
) -> Setup:
    """Write ``sipguard.yaml`` for one test into ``workdir`` (free ports unless given).

    ``overrides`` is merged into :func:`base_config` (a ``None`` value deletes a key), e.g.
    ``{"sip": {"session_expires": 90}}`` or ``{"trunks": {"pbx": {"targets": [...]}}}``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    sip_port = sip_port or free_port(SIPGUARD_IP)
    metrics_port = metrics_port or free_port(SIPGUARD_IP)
    callee_port = callee_port or free_port(CALLEE_IP)
    cdr_dir = workdir / "cdr"
    cfg = base_config(
        sip_port=sip_port,
        metrics_port=metrics_port,
        callee_port=callee_port,
        cdr_dir=cdr_dir,
        target_transport=target_transport,
    )
    if overrides:
        cfg = _merge(cfg, overrides)
    path = workdir / "sipguard.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Setup(
        config_path=path,
        workdir=workdir,
        cdr_dir=cdr_dir,
        sip_port=sip_port,
        metrics_port=metrics_port,
        callee_port=callee_port,
        transport=target_transport,
        config=cfg,
    )


# -- sipguard ------------------------------------------------------------------------------


class SipguardError(RuntimeError):
    pass


class Sipguard:
    """sipguard as a subprocess: ``start()``, ``stop()``; CPU and memory from /proc."""

    def __init__(
        self,
        setup: Setup,
        *,
        cpus: Sequence[int] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.setup = setup
        self.cpus = cpus
        self.env = child_env(env)
        self.log_path = setup.workdir / "sipguard.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self._log: Any = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 15.0) -> Sipguard:
        cmd = [
            *pin_prefix(self.cpus),
            *sipguard_command(),
            "run",
            "-c",
            str(self.setup.config_path),
        ]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.setup.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            # the test process runs no threads of its own; PDEATHSIG is a safety net
            preexec_fn=child_setup(None if pin_prefix(self.cpus) else self.cpus),  # noqa: PLW1509
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SipguardError(
                    f"sipguard exited with {self.proc.returncode} at start-up:\n{self.log_tail()}"
                )
            if self.healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise SipguardError(f"sipguard did not answer /healthz in {timeout}s:\n{self.log_tail()}")

    def url(self, path: str) -> str:
        return f"http://{SIPGUARD_IP}:{self.setup.metrics_port}{path}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url("/healthz"), timeout=1.0) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def metrics(self) -> dict[str, float]:
        return scrape_metrics(self.url("/metrics"))

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM (sipguard drains, writes its CDRs and exits), SIGKILL after ``grace``."""
        if self.proc is not None and self.exit_code is None:
            self.exit_code = stop_pid(self.proc, grace)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.exit_code

    def __enter__(self) -> Sipguard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- /proc ------------------------------------------------------------------------------

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def status(self) -> dict[str, int]:
        return proc_status_kb(self.pid)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds, from /proc/PID/stat (SIPP-NOTES gotcha 5)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int) -> dict[str, int]:
    """The ``Vm*``/``Rss*`` lines of /proc/PID/status, in kB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if name.startswith(("Vm", "Rss")) and parts and parts[0].isdigit():
            out[name] = int(parts[0])
    return out


def scrape_metrics(url: str, timeout: float = 5.0) -> dict[str, float]:
    """The Prometheus text at ``url`` as ``{'name{labels}': value}`` (comments skipped)."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def read_cdrs(cdr_dir: Path) -> list[dict[str, Any]]:
    """Every CDR record the file sink wrote under ``cdr_dir`` (all day files)."""
    out: list[dict[str, Any]] = []
    for path in sorted(cdr_dir.glob("cdr-*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


# -- SIPp ----------------------------------------------------------------------------------

# exit codes of SIPp (sipp -h): 0 every call succeeded, 1 at least one failed,
# 97 exit on internal command, 99 normal exit without calls processed, 255 fatal
# error, 254 fatal error binding a socket; `timeout` adds 124 (timed out) and 137.
SIPP_EXIT = {
    0: "all calls successful",
    1: "at least one call failed",
    97: "exit on internal command",
    99: "normal exit without calls processed",
    124: "killed by the timeout wrapper",
    137: "killed (SIGKILL) by the timeout wrapper",
    143: "terminated (SIGTERM)",
    254: "fatal error binding a socket",
    255: "fatal error",
}


@dataclass
class SippResult:
    name: str
    returncode: int | None
    stats: dict[str, str]
    rtts_ms: list[float]
    workdir: Path
    prefix: str
    counts: dict[str, str] = field(default_factory=dict)

    def stat(self, column: str, default: int = 0) -> int:
        value = self.stats.get(column, "")
        try:
            return int(float(value))
        except ValueError:
            return default

    @property
    def successful(self) -> int:
        return self.stat("SuccessfulCall(C)")

    @property
    def failed(self) -> int:
        return self.stat("FailedCall(C)")

    @property
    def created(self) -> int:
        return self.stat("TotalCallCreated")

    @property
    def retransmissions(self) -> int:
        return self.stat("Retransmissions(C)")

    @property
    def elapsed_s(self) -> float:
        """Elapsed time of the run from the cumulative ``ElapsedTime(C)`` (hh:mm:ss:us)."""
        parts = self.stats.get("ElapsedTime(C)", "").split(":")
        try:
            h, m, s = (int(x) for x in parts[:3])
            us = int(parts[3]) if len(parts) > 3 else 0
        except ValueError:
            return 0.0
        return h * 3600 + m * 60 + s + us / 1e6

    def failure_counters(self) -> dict[str, int]:
        """The non-zero ``Failed*(C)`` counters, e.g. ``{'FailedUnexpectedMessage(C)': 1}``."""
        return {
            k: self.stat(k)
            for k in self.stats
            if k.startswith("Failed") and k.endswith("(C)") and self.stat(k)
        }

    def _read(self, suffix: str, limit: int) -> str:
        path = self.workdir / f"{self.prefix}{suffix}"
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return ""
        return text if len(text) <= limit else "…" + text[-limit:]

    def messages(self, limit: int = 20000) -> str:
        return self._read("_messages.log", limit)

    def traced(self) -> list[TracedMessage]:
        """Every message SIPp sent and received, from its ``-trace_msg`` log."""
        return parse_message_log(self._read("_messages.log", 1 << 30))

    def ladder(self) -> str:
        """The messages as a short ladder: ``> INVITE (1 INVITE)``, ``< 200 (1 INVITE)``."""
        out = []
        for m in self.traced():
            arrow = ">" if m.direction == "sent" else "<"
            what = str(m.status) if m.status is not None else (m.method or "?")
            out.append(f"{arrow} {what} ({m.header('cseq')})")
        return "\n".join(out)

    def invite_finals(self, *, initial_only: bool = True) -> list[int]:
        """Final statuses received for INVITEs, in order, retransmissions left out.

        ``initial_only``: only for the INVITEs sent without a To tag (those that set up a
        call, retries after a 401/407 included), not for re-INVITEs.
        """
        traced = self.traced()
        initial = {
            m.header("cseq")
            for m in traced
            if m.direction == "sent" and m.method == "INVITE" and ";tag=" not in m.header("to")
        }
        seen: set[tuple[str, int]] = set()
        out: list[int] = []
        for m in traced:
            if m.direction != "received" or m.status is None or m.status < 200:
                continue
            cseq = m.header("cseq")
            if not cseq.upper().endswith("INVITE"):
                continue
            if initial_only and cseq not in initial:
                continue
            key = (cseq, m.status)
            if key not in seen:
                seen.add(key)
                out.append(m.status)
        return out

    def errors(self, limit: int = 8000) -> str:
        return self._read("_errors.log", limit)

    def screen(self, limit: int = 8000) -> str:
        return self._read("_screen.log", limit)

    def output(self, limit: int = 4000) -> str:
        return self._read("_stdout.log", limit)

    def describe(self) -> str:
        """Everything needed to see why a run failed, for an assertion message."""
        rc = self.returncode
        return (
            f"--- SIPp {self.name}: exit {rc} ({SIPP_EXIT.get(rc or 0, '?')}), "
            f"successful={self.successful} failed={self.failed} "
            f"failures={self.failure_counters()} retrans={self.retransmissions}\n"
            f"--- ladder ({self.name}):\n{self.ladder()}\n"
            f"--- errors:\n{self.errors()}\n--- screen:\n{self.screen()}\n"
            f"--- stdout/stderr:\n{self.output()}\n--- messages:\n{self.messages()}\n"
        )


@dataclass
class TracedMessage:
    """One SIP message from a SIPp ``-trace_msg`` log."""

    direction: str  # "sent" or "received"
    start_line: str
    headers: list[tuple[str, str]]
    body: str

    @property
    def status(self) -> int | None:
        if self.start_line.startswith("SIP/2.0 "):
            with contextlib.suppress(ValueError, IndexError):
                return int(self.start_line.split()[1])
        return None

    @property
    def method(self) -> str | None:
        return None if self.status is not None else self.start_line.split(" ", 1)[0]

    def header(self, name: str) -> str:
        """The first value of header ``name`` (compact forms not expanded), or ''."""
        values = self.header_all(name)
        return values[0] if values else ""

    def header_all(self, name: str) -> list[str]:
        low = name.lower()
        return [v for n, v in self.headers if n.lower() == low]

    def head(self) -> str:
        """Start line and headers as text (no body)."""
        return "\n".join([self.start_line, *(f"{n}: {v}" for n, v in self.headers)])


_TRACE_SEP = "-----------------------------------------------"


def parse_message_log(text: str) -> list[TracedMessage]:
    """Split a SIPp ``-trace_msg`` log into messages (UDP and TCP, sent and received)."""
    out: list[TracedMessage] = []
    for block in text.split(_TRACE_SEP)[1:]:
        lines = block.split("\n")
        # lines[0]: the date; lines[1]: "UDP message sent (N bytes):" / "... received [N] bytes :"
        if len(lines) < 4:
            continue
        what = lines[1]
        if " message " not in what:
            continue
        direction = "sent" if " sent" in what else "received"
        rest = lines[2:]
        while rest and not rest[0].strip():
            rest = rest[1:]
        if not rest:
            continue
        start = rest[0].strip()
        headers: list[tuple[str, str]] = []
        i = 1
        while i < len(rest) and rest[i].strip():
            line = rest[i].rstrip("\r")
            if line[:1] in (" ", "\t") and headers:
                n, v = headers[-1]
                headers[-1] = (n, v + " " + line.strip())
            else:
                n, _, v = line.partition(":")
                headers.append((n.strip(), v.strip()))
            i += 1
        body = "\n".join(x.rstrip("\r") for x in rest[i + 1 :]).strip()
        out.append(TracedMessage(direction, start, headers, body))
    return out


class Sipp:
    """One SIPp process, bounded three ways (``-m``, ``-timeout``, ``timeout``).

    ``scenario`` is a built-in name (``uac``, ``uas``) or the path of an XML file.
    ``remote`` is ``host:port`` for a client scenario, ``None`` for a server.
    Files are written into ``workdir`` as ``<name>_stat.csv``, ``<name>_messages.log``,
    ``<name>_errors.log``, ``<name>_screen.log``, ``<name>_stdout.log``, and the
    ``-trace_rtt`` file SIPp names itself.
    """

    def __init__(
        self,
        name: str,
        scenario: str | Path,
        *,
        workdir: Path,
        local_ip: str,
        local_port: int,
        remote: str | None = None,
        calls: int = 1,
        rate: float | None = None,
        rate_period_ms: int | None = None,
        limit: int | None = None,
        hold_ms: int | None = None,
        transport: str = "u1",
        service: str = DIALLED,
        timeout_s: float = 20.0,
        trace_msg: bool = True,
        trace_rtt: bool = False,
        buff_size: int | None = None,
        cpus: Sequence[int] | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.scenario = scenario
        self.workdir = workdir
        self.timeout_s = timeout_s
        self.cpus = cpus
        self.local_ip = local_ip
        self.local_port = local_port
        self.transport = transport
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: Any = None
        self.prefix = name
        workdir.mkdir(parents=True, exist_ok=True)
        cmd = [SIPP]
        if isinstance(scenario, Path) or scenario.endswith(".xml"):
            cmd += ["-sf", str(scenario)]
        else:
            cmd += ["-sn", scenario]
        if remote is not None:
            cmd.append(remote)
        cmd += ["-i", local_ip, "-p", str(local_port), "-t", transport, "-s", service]
        cmd += ["-m", str(calls)]
        if rate is not None:
            cmd += ["-r", f"{rate:g}"]
        if rate_period_ms is not None:
            cmd += ["-rp", f"{rate_period_ms}ms"]
        if limit is not None:
            cmd += ["-l", str(limit)]
        if hold_ms is not None:
            cmd += ["-d", str(hold_ms)]
        if buff_size is not None:
            cmd += ["-buff_size", str(buff_size)]
        cmd += ["-timeout", f"{int(timeout_s)}s", "-timeout_error", "-nostdin"]
        cmd += ["-trace_stat", "-stf", str(workdir / f"{name}_stat.csv"), "-fd", "1"]
        cmd += ["-trace_err", "-error_file", str(workdir / f"{name}_errors.log")]
        cmd += ["-trace_screen", "-screen_file", str(workdir / f"{name}_screen.log")]
        cmd += ["-trace_counts"]
        if trace_msg:
            cmd += ["-trace_msg", "-message_file", str(workdir / f"{name}_messages.log")]
        if trace_rtt:
            # SIPp writes its response times in batches of -rtt_freq calls and drops a
            # last incomplete batch: take a batch size that divides the number of calls
            freq = next(f for f in (1000, 100, 10, 1) if calls % f == 0)
            cmd += ["-trace_rtt", "-rtt_freq", str(freq)]
        cmd += list(extra)
        self.sipp_cmd = cmd
        # the wrapper: SIGTERM a little after SIPp's own -timeout, SIGKILL 5 s later
        self.cmd = [
            *pin_prefix(cpus),
            TIMEOUT,
            "--kill-after=5",
            f"{int(timeout_s) + 10}",
            *cmd,
        ]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Sipp:
        """Start in the background (a UAS, or a UAC to wait for later)."""
        self._out = open(self.workdir / f"{self.name}_stdout.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            # the test process runs no threads of its own; PDEATHSIG is a safety net
            preexec_fn=child_setup(None if pin_prefix(self.cpus) else self.cpus),  # noqa: PLW1509
        )
        return self

    def wait_listening(self, timeout: float = 5.0) -> None:
        """Wait until SIPp has bound its socket (a server must be ready first)."""
        kind = socket.SOCK_STREAM if self.transport.startswith("t") else socket.SOCK_DGRAM
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"SIPp {self.name} exited early:\n{self.result().describe()}")
            if not _port_free(self.local_ip, self.local_port, kind):
                return
            time.sleep(0.02)
        raise RuntimeError(
            f"SIPp {self.name} is not listening on {self.local_ip}:{self.local_port}"
        )

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to exit by itself; stop it by PID if it outlives ``timeout``."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout if timeout is not None else self.timeout_s + 20)
        except subprocess.TimeoutExpired:
            stop_pid(self.proc)
        return self.result()

    def stop(self) -> SippResult:
        """Stop by PID (SIGTERM, SIGKILL fallback) and read what it wrote."""
        if self.proc is not None:
            stop_pid(self.proc, grace=3.0)
        return self.result()

    def run(self) -> SippResult:
        """Run in the foreground until SIPp exits (bounded)."""
        self.start()
        try:
            return self.wait()
        finally:
            self.stop()

    def result(self) -> SippResult:
        if self._out is not None and self.proc is not None and self.proc.poll() is not None:
            self._out.close()
            self._out = None
        rc = self.proc.returncode if self.proc is not None else None
        return SippResult(
            name=self.name,
            returncode=rc,
            stats=_last_csv_row(self.workdir / f"{self.name}_stat.csv"),
            rtts_ms=_read_rtts(self.workdir),
            workdir=self.workdir,
            prefix=self.name,
        )


def _port_free(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _last_csv_row(path: Path) -> dict[str, str]:
    """The header and the last row of a SIPp ``-trace_stat`` file, as a dict."""
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    head = lines[0].rstrip(";").split(";")
    last = lines[-1].rstrip(";").split(";")
    return dict(zip(head, last, strict=False))


def _read_rtts(workdir: Path) -> list[float]:
    """Response times in ms from every ``*_rtt.csv`` SIPp wrote into ``workdir``."""
    out: list[float] = []
    for path in workdir.glob("*_rtt.csv"):
        for line in path.read_text(errors="replace").splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 2:
                with contextlib.suppress(ValueError):
                    out.append(float(parts[1]))
    return out


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The ``pct`` percentile by nearest rank, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(pct / 100.0 * len(ordered))  # nearest rank, 1-based
    return ordered[max(0, min(len(ordered), rank) - 1)]


def udp_drops() -> dict[str, int]:
    """Dropped datagrams per local ``addr:port`` from /proc/net/udp (last column)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) < 13:
                continue
            hexaddr, hexport = parts[1].split(":")
            addr = socket.inet_ntoa(bytes.fromhex(hexaddr)[::-1])
            out[f"{addr}:{int(hexport, 16)}"] = int(parts[-1])
    return out


@contextlib.contextmanager
def running(*procs: Sipguard | Sipp) -> Iterator[None]:
    """Stop every one of ``procs`` by PID on the way out, whatever happened."""
    try:
        yield
    finally:
        for p in reversed(procs):
            with contextlib.suppress(Exception):
                p.stop()


def uac(
    setup: Setup,
    name: str = "uac",
    scenario: str | Path = "uac",
    *,
    tcp: bool = False,
    **kw: Any,
) -> Sipp:
    """A SIPp client on the caller address, calling sipguard."""
    return Sipp(
        name,
        scenario,
        workdir=setup.workdir,
        local_ip=CALLER_IP,
        local_port=kw.pop("local_port", None) or free_port(CALLER_IP),
        remote=setup.sipguard_addr,
        transport="t1" if tcp else "u1",
        **kw,
    )


def uas(
    setup: Setup,
    name: str = "uas",
    scenario: str | Path = "uas",
    *,
    tcp: bool = False,
    **kw: Any,
) -> Sipp:
    """A SIPp server on the callee address and port sipguard sends its calls to."""
    return Sipp(
        name,
        scenario,
        workdir=setup.workdir,
        local_ip=CALLEE_IP,
        local_port=setup.callee_port,
        remote=None,
        transport="t1" if tcp else "u1",
        **kw,
    )
