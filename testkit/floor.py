"""The floor: a bare stateless SIP relay on uvloop, run through the same SIPp runs.

Used by ``python loadtests/run.py --floor`` (alone, or with ``--versus-sippy`` beside
sippy and sipguard). The performance issue describes it: "a bare stateless relay written
on uvloop (receive a datagram, add or remove one Via line, send it on)". It does no SIP
work at all: no parsing beyond finding the Via, no transactions, no dialogs, no timers,
no CDRs, no privacy. What it costs per call at a given rate is what any Python program
on uvloop pays on this machine just to be woken for, read and write the 12 datagrams of
a call (sipguard handles 13: it sends 100 Trying too): a floor under every Python
element, sipguard and sippy included, at that rate.

The relay is ``floor_relay.py``, run as its own process that imports nothing of the
runner, pinned like sipguard and stopped by its PID. It is measured exactly like
sipguard: CPU seconds from ``/proc/PID/stat`` while SIPp places the calls.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from testkit.load import SIPGUARD_CPU, LoadResult, run_peer
from testkit.peer import PeerProcess
from testkit.sipp import CALLEE_IP, SIPGUARD_IP, Setup

FLOOR_LABEL = "floor relay"
RELAY = Path(__file__).resolve().with_name("floor_relay.py")


class FloorRelay(PeerProcess):
    """``floor_relay.py`` listening where sipguard would, sending on to the SIPp uas."""

    name = "the floor relay"

    def __init__(self, setup: Setup, *, cpus: Sequence[int] | None = None) -> None:
        super().__init__(
            setup,
            [
                sys.executable,
                str(RELAY),
                f"{SIPGUARD_IP}:{setup.sip_port}",
                f"{CALLEE_IP}:{setup.callee_port}",
            ],
            cpus=cpus,
            log_name="floor.log",
        )


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
    """One run with the floor relay as the element, pinned where sipguard would be."""
    cpus = SIPGUARD_CPU if pin else None
    return run_peer(
        lambda setup: FloorRelay(setup, cpus=cpus),
        FLOOR_LABEL,
        rate,
        duration_s,
        hold_ms,
        workdir=workdir,
        pin=pin,
        quiet=quiet,
        uas_scenario=uas_scenario,
    )
