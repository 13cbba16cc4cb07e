"""CPU cost of whole calls through the sans-IO B2BUA core, without sockets.

Drives the same 14-message flow as SIPp's uac/uas through ``B2BUA.receive`` with a fake
clock and prints calls per second of one core (median of several runs) and the cost per
call and per message. ``--profile`` prints where the time goes (cProfile).
``--cpu`` times the core by the thread's CPU clock instead of the wall clock.
``--egress`` makes every call withheld towards an untrusted trunk (another number than
the caller's), so that every message to the callee goes through the egress check
(:mod:`sipguard.b2bua.egress`); without it the calls go to a trusted trunk, unchecked.
``--metrics`` gives the core a :class:`~sipguard.metrics.Metrics` to count into, as
``sipguard run`` always does (without it the per-call counters and the set-up histogram
are not measured).

``--refused`` measures a new INVITE shed under overload instead (the core's shedder set
to admit none): what a refusal costs, to hold against a whole call (issue 19: at most a
tenth of it).

    .venv/bin/python benchmarks/b2bua.py [--calls 5000] [--runs 5] [--profile] [--egress]
        [--refused] [--cpu] [--metrics]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# appended, not first: PYTHONPATH=build/native (tools/build_native.py) then measures the
# compiled modules, and without it these sources are measured
sys.path.append(str(Path(__file__).resolve().parents[1]))

from sipguard.b2bua.core import B2BUA
from sipguard.metrics import Metrics
from sipguard.net.server import core_build, tune_gc
from sipguard.sip.transaction import Flow
from testkit.callsim import CONFIG, Wire, basic_call, config_text, invite

MESSAGES_PER_CALL = 14  # received and sent by the B2BUA: 7 on each leg
# --egress: the caller withholds its number (the trunk's default) and the callee's trunk
# is untrusted; the number dialled is not the caller's own
EGRESS_CONFIG = CONFIG.replace(
    "    route_to: pbx\n", "    route_to: pbx\n    presentation: restricted\n"
).replace("    trusted: true\n", "    trusted: false\n")
EGRESS_CALLEE = "0307654321"


class TimedCore:
    """Stands for the B2BUA in the simulator and adds up the time spent in ``receive``.

    A wrapper, not a patched method: the core may be compiled (mypyc), whose methods
    cannot be replaced on an instance.
    """

    def __init__(self, core: B2BUA, clock: Callable[[], float] = time.perf_counter) -> None:
        self.core = core
        self.inner = 0.0
        self.clock = clock

    def receive(self, data: bytes, flow: Flow, now: float) -> None:
        t0 = self.clock()
        self.core.receive(data, flow, now)
        self.inner += self.clock() - t0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)


def run(
    calls: int, egress: bool = False, cpu: bool = False, metrics: bool = False
) -> tuple[float, float]:
    """(seconds for the whole run, seconds of it inside the B2BUA core)."""
    config = config_text(EGRESS_CONFIG if egress else CONFIG)
    wire = Wire(config, metrics=Metrics() if metrics else None)
    user = EGRESS_CALLEE if egress else "0201234567"
    core = wire.core
    timed = TimedCore(core, time.thread_time if cpu else time.perf_counter)
    wire.core = timed  # type: ignore[assignment]
    clock = time.perf_counter
    start = clock()
    for n in range(calls):
        basic_call(wire, n, user=user)
        core.cdr_out.clear()
        if n % 500 == 0:
            wire.advance(1.0)
    return clock() - start, timed.inner


def run_refused(calls: int) -> tuple[float, float]:
    """(seconds for the whole run, seconds inside the core): new INVITEs, each shed."""
    wire = Wire()
    core = wire.core
    core.shedder.shedding = True
    core.shedder.admitted = 0.0  # admits none: every new call is refused 503 (overload)
    timed = TimedCore(core)
    wire.core = timed  # type: ignore[assignment]
    clock = time.perf_counter
    start = clock()
    for n in range(calls):
        wire.from_caller(invite(n))
        wire.to_caller.clear()
        core.cdr_out.clear()
    if core.calls:
        raise SystemExit("a call was admitted: the refusal path was not measured")
    return clock() - start, timed.inner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--refused", action="store_true", help="new INVITEs shed (503) instead")
    ap.add_argument("--egress", action="store_true", help="withheld calls to an untrusted trunk")
    ap.add_argument(
        "--metrics", action="store_true", help="count into Metrics, as sipguard run does"
    )
    ap.add_argument(
        "--cpu",
        action="store_true",
        help="time the core by this thread's CPU clock, not the wall clock: steadier on a "
        "shared machine (each reading is a system call, ~1 us more per message)",
    )
    args = ap.parse_args()

    def measure(calls: int) -> tuple[float, float]:
        return (
            run_refused(calls) if args.refused else run(calls, args.egress, args.cpu, args.metrics)
        )

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        measure(args.calls)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return 0
    tune_gc()  # as sipguard run does: start-up objects frozen, the cyclic collector off
    results = [measure(args.calls) for _ in range(args.runs)]
    med = statistics.median(t for t, _ in results)
    core = statistics.median(c for _, c in results)
    # the simulator parses what the B2BUA sends and builds what the peers send: only the
    # time inside B2BUA.receive (parse, transactions, calls, privacy, building) is the core's
    print(f"core                      {core_build()}")
    kind = " (withheld, egress-checked)" if args.egress else ""
    kind += " (with metrics)" if args.metrics else ""
    print(f"calls per run             {args.calls}{kind}")
    print(f"median run (sim + core)   {med:.3f} s")
    runs = ", ".join(f"{c:.3f}" for _, c in results)
    print(f"median core time          {core:.3f} s  (runs: {runs})")
    print(f"core: calls/s of one core {args.calls / core:,.0f}")
    print(f"core: per call            {core / args.calls * 1e6:,.0f} us")
    print(f"core: per message         {core / args.calls / MESSAGES_PER_CALL * 1e6:,.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
