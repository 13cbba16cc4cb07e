"""An element other than sipguard run through the load runner's SIPp runs (sippy, the
floor relay): a subprocess listening where sipguard would, measured from ``/proc`` and
stopped by its PID."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from testkit.sipp import (
    SIPGUARD_IP,
    Setup,
    child_setup,
    pin_prefix,
    proc_cpu_seconds,
    proc_status_kb,
    stop_pid,
    udp_drops,
)


class PeerError(RuntimeError):
    pass


class PeerProcess:
    """``command`` pinned to ``cpus``, its output in ``setup.workdir / log_name``."""

    name = "the element"
    error: type[PeerError] = PeerError
    settle_s = 0.0  # after its socket is bound (worker threads still starting)

    def __init__(
        self,
        setup: Setup,
        command: Sequence[str],
        *,
        cpus: Sequence[int] | None = None,
        env: Mapping[str, str] | None = None,
        log_name: str = "element.log",
    ) -> None:
        self.setup = setup
        self.cpus = cpus
        self.env = dict(env) if env is not None else None
        self.log_path = setup.workdir / log_name
        self.cmd = [*pin_prefix(cpus), *command]
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self._log: Any = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> PeerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.setup.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=child_setup(None if pin_prefix(self.cpus) else self.cpus),  # noqa: PLW1509
        )
        addr = f"{SIPGUARD_IP}:{self.setup.sip_port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self.error(
                    f"{self.name} exited with {self.proc.returncode} at start-up:\n"
                    f"{self.log_tail()}"
                )
            if addr in udp_drops():  # its UDP socket is bound (/proc/net/udp)
                time.sleep(self.settle_s)
                return self
            time.sleep(0.05)
        self.stop()
        raise self.error(f"{self.name} did not bind {addr} in {timeout}s:\n{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> int | None:
        if self.proc is not None and self.exit_code is None:
            self.exit_code = stop_pid(self.proc, grace)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.exit_code

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _pids(self) -> list[int]:
        """Its PID and those of any child processes it started."""
        out = [self.pid]
        i = 0
        while i < len(out):
            with_children: list[int] = []
            task_dir = Path(f"/proc/{out[i]}/task")
            for task in task_dir.glob("*/children") if task_dir.exists() else ():
                with contextlib.suppress(OSError, ValueError):
                    with_children += [int(x) for x in task.read_text().split()]
            out += [p for p in with_children if p not in out]
            i += 1
        return out

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all its threads) and of any children."""
        total = 0.0
        for pid in self._pids():
            with contextlib.suppress(OSError, ValueError):
                total += proc_cpu_seconds(pid)
        return total

    def status(self) -> dict[str, int]:
        return proc_status_kb(self.pid)
