"""The floor: a bare stateless SIP relay on uvloop, run through the same SIPp runs.

Used by ``python loadtests/run.py --versus-sippy --with-floor`` and ``run.py --floor``.
The performance issue describes it: "a bare stateless relay written on uvloop (receive a
datagram, add or remove one Via line, send it on)". It does no SIP work at all: no
parsing beyond finding the Via, no transactions, no dialogs, no timers, no CDRs, no
privacy. What it costs per call at a given rate is what any Python program on uvloop
pays on this machine just to be woken for, read and write the 14 datagrams of a call:
a floor under every Python element, sipguard and sippy included, at that rate.

It runs as its own process (``python loadtests/floor.py LISTEN TARGET``), pinned like
sipguard and stopped by its PID, and it is measured exactly like sipguard: CPU seconds
from ``/proc/PID/stat`` while SIPp places the calls.

Requests (from the SIPp uac) get one ``Via`` line of its own pushed on top and go to
TARGET (the SIPp uas); responses lose that top ``Via`` value and go to the address in
the next one (the uac's). SIPp's uac sends its ACK and BYE to the relay too, as it sends
everything to the address it was given, so no Record-Route is needed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loadtests.run import SIPGUARD_CPU, LoadResult, peer_setup, run_element  # noqa: E402
from tests.sipp_harness import (  # noqa: E402
    CALLEE_IP,
    SIPGUARD_IP,
    Setup,
    _child_setup,
    _pin_prefix,
    proc_cpu_seconds,
    proc_status_kb,
    stop_pid,
    udp_drops,
)

FLOOR_LABEL = "floor relay"
_VIA = b"\r\nVia: "
_RESPONSE = b"SIP/2.0 "
_UDP = b"SIP/2.0/UDP "


def via_prefix(host: str, port: int) -> bytes:
    """The start of the relay's own Via line; the caller's branch value is appended."""
    return f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKfl".encode()


def relay(
    data: bytes, prefix: bytes, target: tuple[str, int]
) -> tuple[bytes, tuple[str, int]] | None:
    """What to send, and where, for one datagram; ``None`` drops it (no Via: not SIP).

    A request gets ``prefix`` + the top branch's value after ``z9hG4bK`` as a new top Via
    (unique per client transaction, as RFC 3261 §8.1.1.7 asks, and the same for a
    retransmission) and goes to ``target``. A response loses its top Via value, whether
    on a line of its own or first in a comma list (SIPp's ``[last_Via:]`` folds them),
    and goes to the sent-by address of the next (port 5060 if it has none).
    """
    i = data.find(_VIA)
    if i < 0:
        return None
    i += 2  # the start of the top Via line
    eol = data.find(b"\r\n", i)
    if eol < 0:
        return None
    if not data.startswith(_RESPONSE):
        b = data.find(b"branch=z9hG4bK", i, eol)
        if b < 0:
            return None
        return data[:i] + prefix + data[b + 14 : eol] + b"\r\n" + data[i:], target
    comma = data.find(b",", i, eol)
    if comma > 0:  # "Via: ours, theirs": keep "Via: " and theirs
        v = comma + 1
        while data[v : v + 1] in (b" ", b"\t"):
            v += 1
        out = data[: i + 5] + data[v:]
    else:  # our own line: drop it; theirs is the next line
        if not data.startswith(b"Via: ", eol + 2):
            return None
        out = data[:i] + data[eol + 2 :]
        v = eol + 2 + 5
    if not data.startswith(_UDP, v):
        return None
    sent_by = v + len(_UDP)
    end = data.find(b"\r\n", sent_by)
    semi = data.find(b";", sent_by, end)
    host, _, port = data[sent_by : semi if semi > 0 else end].partition(b":")
    try:
        return out, (host.decode("ascii"), int(port) if port else 5060)
    except ValueError:
        return None


def serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    """Relay on uvloop until killed."""
    import uvloop

    prefix = via_prefix(*listen)

    class Relay(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's UDPTransport

        def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
            sent = relay(data, prefix, target)
            if sent is not None:
                self.transport.sendto(*sent)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(Relay, local_addr=listen)
        await asyncio.Event().wait()

    uvloop.run(run())


class FloorRelay:
    """:func:`serve` as a subprocess listening where sipguard would; stopped by PID."""

    def __init__(self, setup: Setup, *, cpus: Sequence[int] | None = None) -> None:
        self.setup = setup
        self.cpus = cpus
        self.log_path = setup.workdir / "floor.log"
        self.cmd = [
            *_pin_prefix(cpus),
            sys.executable,
            str(Path(__file__).resolve()),
            f"{SIPGUARD_IP}:{setup.sip_port}",
            f"{CALLEE_IP}:{setup.callee_port}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 15.0) -> FloorRelay:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_child_setup(None if _pin_prefix(self.cpus) else self.cpus),  # noqa: PLW1509
            )
        addr = f"{SIPGUARD_IP}:{self.setup.sip_port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the floor relay exited with {self.proc.returncode}")
            if addr in udp_drops():  # its socket is bound (/proc/net/udp)
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the floor relay did not bind {addr} in {timeout}s")

    def stop(self, grace: float = 5.0) -> int | None:
        if self.proc is not None and self.exit_code is None:
            self.exit_code = stop_pid(self.proc, grace)
        return self.exit_code

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def status(self) -> dict[str, int]:
        return proc_status_kb(self.pid)


def run_floor_load(
    rate: float,
    duration_s: float,
    hold_ms: int = 1000,
    *,
    workdir: Path,
    pin: bool = True,
    quiet: bool = False,
    uas_scenario: str | Path = "uas",
) -> LoadResult:
    """One run of :func:`run.run_element` with the floor relay as the element (UDP only)."""
    setup = peer_setup(workdir)
    relay_ = FloorRelay(setup, cpus=SIPGUARD_CPU if pin else None)
    result = run_element(
        relay_,
        setup,
        rate,
        duration_s,
        hold_ms,
        transport="udp",
        pin=pin,
        quiet=quiet,
        label=FLOOR_LABEL,
        uas_scenario=uas_scenario,
    )
    result.writes_cdrs = False
    return result


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: floor.py LISTEN_IP:PORT TARGET_IP:PORT", file=sys.stderr)
        sys.exit(2)
    serve(_address(sys.argv[1]), _address(sys.argv[2]))
