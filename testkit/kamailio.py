"""Debian's Kamailio as a process on loopback: the balancer tests and the load runner.

:class:`Kamailio` starts ``/usr/sbin/kamailio`` in the foreground (``-DD -E``: no
daemon, log to stderr) from a given configuration file, with everything it writes in a
private folder: the runtime directory (``-Y``, where its control sockets go), the pid
file (``-P``) and the working directory (``-w``). No root-owned directory and no database
are needed. The configuration is a parameter and so are its pre-processor defines
(``-A NAME=VALUE``), so that one committed configuration (``deploy/kamailio/``) can be
filled with the addresses and ports of a test; :func:`render_template` fills a
``{{NAME}}`` template for files that defines cannot reach (a dispatcher list).

``start()`` waits until Kamailio answers an ``OPTIONS`` on its SIP address (any SIP
response counts: that it parses and answers is what "up" means); ``stop()`` sends
SIGTERM to the main PID (Kamailio's main process takes its children down), then SIGKILL.
``cpu_seconds()`` is the CPU time of the main process plus all its forked workers, read
from ``/proc`` (workers that exited are already counted in the parent's ``cutime``).

Kamailio missing is a test failure, not a skip: ``./dev.sh test`` installs the
``kamailio`` package (``TEST_DEBS``); :func:`require_kamailio` fails the test with that
hint, like :mod:`testkit.pgserver` does for PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from testkit.sipp import child_setup, pin_prefix, proc_cpu_seconds, stop_pid

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
MODULES_DIR = "/usr/lib/x86_64-linux-gnu/kamailio/modules"


def kamailio_available() -> bool:
    return os.path.exists(KAMAILIO) and os.access(KAMAILIO, os.X_OK)


def require_kamailio() -> None:
    """Fail (not skip) the calling test when Kamailio is not installed."""
    if not kamailio_available():
        import pytest

        pytest.fail(
            "kamailio not found: the balancer tests need Debian's kamailio package. "
            "Run ./dev.sh test as root, which installs it (TEST_DEBS).",
            pytrace=False,
        )


class KamailioError(RuntimeError):
    pass


_TEMPLATE_KEY = re.compile(r"\{\{([A-Z0-9_]+)\}\}")


def render_template(template: str, values: Mapping[str, object]) -> str:
    """Replace every ``{{NAME}}`` in ``template``; a name without a value is an error."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template value {key} not given")
        return str(values[key])

    return _TEMPLATE_KEY.sub(sub, template)


class Raw(str):
    """A define value passed as it is (no quotes): a socket such as
    ``udp:127.0.0.1:5060`` for ``listen=``, which a quoted string would not be."""


def define_arg(name: str, value: object) -> str:
    """One ``-A`` argument: ``NAME`` for ``True``, numbers and :class:`Raw` bare, other
    strings quoted."""
    if value is True:
        return name
    if isinstance(value, (int, Raw)):
        return f"{name}={value}"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'{name}="{text}"'


def sip_options(
    host: str,
    port: int,
    *,
    timeout: float = 1.0,
    source: str | None = None,
) -> int | None:
    """Send one ``OPTIONS`` over UDP to ``host:port``; the status code of the first
    response, or None if nothing came back within ``timeout``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source or host, 0))
        s.settimeout(timeout)
        lhost, lport = s.getsockname()[:2]
        branch = "z9hG4bK-" + uuid.uuid4().hex[:16]
        call_id = uuid.uuid4().hex
        msg = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {lhost}:{lport};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{lhost}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), (host, port))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            s.settimeout(left)
            try:
                data = s.recv(65535)
            except (TimeoutError, OSError):
                return None
            first = data.split(b"\r\n", 1)[0].split()
            if len(first) >= 2 and first[0] == b"SIP/2.0" and call_id.encode() in data:
                with contextlib.suppress(ValueError):
                    code = int(first[1])
                    if code >= 200:
                        return code


def children_of(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from ``/proc/*/stat``)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        with contextlib.suppress(IndexError, ValueError):
            parents[int(entry)] = int(fields[1])
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out.extend(kids)
        todo.extend(kids)
    return out


class Kamailio:
    """Kamailio in the foreground from ``config`` with ``defines``, files in ``workdir``.

    ``sip_addr`` is the (host, port) that ``start()`` probes with ``OPTIONS``; ``listen``
    entries are passed as ``-l`` (``udp:127.0.0.1:5060``) for configurations that do not
    set their own. ``children`` is ``-n`` (worker processes per UDP socket).
    """

    def __init__(
        self,
        config: Path,
        workdir: Path,
        *,
        sip_addr: tuple[str, int],
        defines: Mapping[str, object] | None = None,
        listen: Sequence[str] = (),
        children: int | None = None,
        shm_mb: int = 64,
        pkg_mb: int = 8,
        cpus: Sequence[int] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.config = Path(config)
        self.workdir = Path(workdir)
        self.sip_addr = sip_addr
        self.defines = dict(defines or {})
        self.listen = list(listen)
        self.children = children
        self.shm_mb = shm_mb
        self.pkg_mb = pkg_mb
        self.cpus = cpus
        self.extra_args = list(extra_args)
        self.rundir = self.workdir / "run"
        self.pid_file = self.workdir / "kamailio.pid"
        self.log_path = self.workdir / "kamailio.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self._log: Any = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [
            *pin_prefix(self.cpus),
            KAMAILIO,
            "-DD",
            "-E",
            "-f", str(self.config),
            "-Y", str(self.rundir),
            "-P", str(self.pid_file),
            "-w", str(self.workdir),
            "-m", str(self.shm_mb),
            "-M", str(self.pkg_mb),
        ]  # fmt: skip
        if os.path.isdir(MODULES_DIR):
            cmd += ["-L", MODULES_DIR]
        if self.children is not None:
            cmd += ["-n", str(self.children)]
        for entry in self.listen:
            cmd += ["-l", entry]
        for name, value in self.defines.items():
            cmd += ["-A", define_arg(name, value)]
        return cmd + self.extra_args

    def check(self) -> None:
        """``kamailio -c``: the configuration parses with these defines."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        cmd = [c for c in self.command() if c not in ("-DD", "-E")] + ["-c"]
        cmd = cmd[len(pin_prefix(self.cpus)) :]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        if out.returncode != 0:
            raise KamailioError(f"kamailio -c failed:\n{out.stderr[-4000:]}")

    def start(self, timeout: float = 15.0) -> Kamailio:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rundir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=child_setup(None if pin_prefix(self.cpus) else self.cpus),  # noqa: PLW1509
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise KamailioError(
                    f"kamailio exited with {self.proc.returncode} at start-up:\n{self.log_tail()}"
                )
            if sip_options(*self.sip_addr, timeout=0.3) is not None:
                return self
            time.sleep(0.05)
        self.stop()
        raise KamailioError(f"kamailio did not answer OPTIONS in {timeout}s:\n{self.log_tail()}")

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM to the main PID (it stops its workers), SIGKILL after ``grace``; workers
        left behind by a SIGKILL are stopped by their PIDs."""
        if self.proc is not None and self.exit_code is None:
            kids = children_of(self.proc.pid) if self.proc.poll() is None else []
            self.exit_code = stop_pid(self.proc, grace)
            for kid in kids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(kid, 9)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.exit_code

    def __enter__(self) -> Kamailio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) of the main process and all its live workers; those
        that exited and were reaped are in the main process's ``cutime``/``cstime``."""
        total = proc_cpu_seconds(self.pid) + _reaped_children_cpu(self.pid)
        for kid in children_of(self.pid):
            with contextlib.suppress(OSError, ValueError):
                total += proc_cpu_seconds(kid)
        return total


def _reaped_children_cpu(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rfind(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[13]) + int(fields[14])) / ticks  # cutime, cstime
