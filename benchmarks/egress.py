"""The egress check's own cost, timed directly (``sipguard.b2bua.egress``).

``benchmarks/b2bua.py --egress`` measures whole calls, where a few microseconds drown in
the noise of a shared machine. This times only what the check adds to one withheld call
towards an untrusted trunk (SIPp's uac/uas flow): building its needles and watching its
B-leg (``watch``), every message of the call through ``allows`` (3 to the callee,
searched; 4 to the caller, looked up and let go) and ``ended``; and what a message costs
when no call is watched at all. CPU time of this thread, the best of several repeats.

    PYTHONPATH=build/native .venv/bin/python benchmarks/egress.py [--rounds 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))

import sipguard.b2bua.egress as egress_module
from sipguard.b2bua.egress import Egress, needles_of
from sipguard.net.server import core_build
from sipguard.sip.message import Request
from sipguard.sip.transaction import Flow
from testkit.callsim import (
    CALLEE,
    CALLER,
    CONFIG,
    SDP,
    Wire,
    config_text,
    in_dialog,
    invite,
    requests,
    response_to,
)

# a withheld call towards an untrusted trunk, as benchmarks/b2bua.py --egress makes
EGRESS_CONFIG = CONFIG.replace(
    "    route_to: pbx\n", "    route_to: pbx\n    presentation: restricted\n"
).replace("    trusted: true\n", "    trusted: false\n")


def best(fn: Callable[[], None], rounds: int, repeats: int = 5) -> float:
    """Microseconds per round, the best of ``repeats``."""
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        for _ in range(rounds):
            fn()
        times.append((time.thread_time() - t0) / rounds * 1e6)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=20000)
    args = ap.parse_args()
    wire = Wire(config_text(EGRESS_CONFIG))
    wire.from_caller(invite(1, "0307654321"))
    (call,) = set(wire.core.dialogs.values())
    to_callee = list(wire.to_callee)
    (b_inv,) = requests(wire.take_callee(), "INVITE")
    assert isinstance(b_inv, Request)
    wire.from_callee(response_to(b_inv, 180, "Ringing", "t"))
    wire.from_callee(response_to(b_inv, 200, "OK", "t", SDP))
    to_caller = list(wire.to_caller)
    ok = wire.take_caller()[-1]
    wire.from_caller(in_dialog("ACK", ok, 1, 1, "z9hG4bK-1-ack"))
    wire.from_caller(in_dialog("BYE", ok, 2, 1, "z9hG4bK-1-bye"))
    to_callee += wire.to_callee
    to_caller += wire.to_caller
    b_flow, a_flow = Flow("udp", 0, *CALLEE), Flow("udp", 0, *CALLER)
    egress, idle = Egress(None), Egress(None)

    def one_call() -> None:
        egress.watch(call)
        for data in to_callee:
            egress.allows(b_flow, data)
        for data in to_caller:
            egress.allows(a_flow, data)
        egress.ended(call, 0.0)

    def needles() -> None:
        needles_of(call)

    def unwatched() -> None:
        for data in to_callee + to_caller:
            idle.allows(b_flow, data)

    one_call()
    assert not egress.leaks, "the benchmark's call must be clean"
    print(f"core                         {core_build()} ({Path(egress_module.__file__).name})")
    print(f"messages                     {len(to_callee)} to the callee, {len(to_caller)} back")
    print(f"watched call, all of it      {best(one_call, args.rounds):6.2f} us")
    print(f"  of which its needles       {best(needles, args.rounds):6.2f} us")
    print(f"a call when none is watched  {best(unwatched, args.rounds):6.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
