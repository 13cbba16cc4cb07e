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

``--refused KIND`` measures new INVITEs refused instead, each kind in its own state
(:data:`REFUSALS`; ``all``: each in turn; no KIND: ``overload``), and then, in the same
invocation, ``--versus-calls`` whole calls the way the load runner places them (withheld,
egress-checked), both with the metrics counting as in production: what a refusal costs
against a whole call (issue 19: at most a tenth of it). Every INVITE must be refused as
its kind says (its response or its silence, ``sipguard_rejected_total{reason}``, the
refused-attempt CDRs of SPEC §6 at ``limits.refused_cdr_rps``, no call admitted), or the
run stops with an error.

    .venv/bin/python benchmarks/b2bua.py [--calls 5000] [--runs 5] [--profile] [--egress]
        [--refused [KIND]] [--versus-calls 3000] [--cpu] [--metrics]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# appended, not first: PYTHONPATH=build/native (tools/build_native.py) then measures the
# compiled modules, and without it these sources are measured
sys.path.append(str(Path(__file__).resolve().parents[1]))

from sipguard.b2bua.core import B2BUA
from sipguard.metrics import Metrics
from sipguard.net.server import core_build, tune_gc
from sipguard.sip.transaction import Flow
from testkit.callsim import (
    CALLER,
    CONFIG,
    STRANGER,
    Addr,
    Wire,
    basic_call,
    config_text,
    establish,
    invite,
)

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


# -- refusals of a new INVITE ----------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """One kind of refusal of a new INVITE: the state that makes it, and what it gives."""

    what: str  # printed
    label: str  # sipguard_rejected_total{reason}
    status: bytes | None  # the response's start line begins so; None: dropped unread
    cdr: bool  # a call attempt: its end record, at most limits.refused_cdr_rps a second
    source: Addr = CALLER
    extra: str = ""  # added to the trunk customers' lines of CONFIG
    top: str = ""  # added to CONFIG's top level
    tick: int = 0  # the clock moves a second every this many INVITEs (0: it stands still)


# the caller's trunk's own limits: one call a second, or one at once
TRUNK_LIMITS = "    limits: {%s}\n"
REFUSALS = {
    "overload": Refusal(
        "shed under overload (the shedder admits none), 503 unread",
        "overload",
        b"SIP/2.0 503 ",
        True,
    ),
    "unknown": Refusal(
        "from a source of no trunk, 403 statelessly",
        "unknown_source",
        b"SIP/2.0 403 ",
        False,
        STRANGER,
        # one stranger answered all along: its budget (20 per 10 s) not spent, the 200
        # answers a second to all strangers never reached
        top="limits: {unknown_source_budget: 1000000000}\n",
        tick=100,
    ),
    "silenced": Refusal(
        "from a source of no trunk past its budget, dropped unread",
        "unknown_source_silenced",
        None,
        False,
        STRANGER,
    ),
    "rate": Refusal(
        "over the trunk's calls per second (limits.cps: 1), 503",
        "trunk_cps",
        b"SIP/2.0 503 ",
        True,
        extra=TRUNK_LIMITS % "cps: 1",
    ),
    "limit": Refusal(
        "over the trunk's calls at once (limits.max_calls: 1), 503",
        "trunk_max_calls",
        b"SIP/2.0 503 ",
        True,
        extra=TRUNK_LIMITS % "max_calls: 1",
    ),
    "cdr": Refusal(
        "while the CDR spool is full (core.accepting False), 503",
        "cdr_spool_full",
        b"SIP/2.0 503 ",
        True,
    ),
}


def counted(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def refusal_wire(kind: str) -> tuple[Wire, Metrics, int]:
    """A core in the state that refuses ``kind``, and the first call number left."""
    r = REFUSALS[kind]
    text = r.top + CONFIG.replace("    route_to: pbx\n", "    route_to: pbx\n" + r.extra, 1)
    metrics = Metrics()
    wire = Wire(config_text(text), metrics=metrics)
    core = wire.core
    first = 0
    if kind == "overload":
        shedder = core.shedder
        shedder.shedding = True
        shedder.admitted = 0.0
        # admits none: every new call is refused 503. The shedder never admits less than
        # MIN_ADMITTED (one call in a hundred); a debt of credit keeps it from that one
        shedder._credit = -1e18
    elif kind == "silenced":
        budget = core.config.limits.unknown_source_budget
        for first in range(budget):  # its budget spent: answered, not measured
            wire.from_peer(STRANGER, invite(first, addr=STRANGER))
        first = budget
        wire.others.clear()
    elif kind == "rate":
        basic_call(wire, 0)  # the one call of this second, over
        first = 1
    elif kind == "limit":
        establish(wire, 0)  # the one call at once, up
        first = 1
    elif kind == "cdr":
        core.accepting = False  # what the driver sets while the CDR writer's spool is full
    core.cdr_out.clear()
    wire.to_caller.clear()
    return wire, metrics, first


def run_refused(calls: int, kind: str = "overload", cpu: bool = False) -> tuple[float, float]:
    """(seconds for the whole run, seconds inside the core): ``calls`` new INVITEs, each
    refused as ``kind`` says (checked: SystemExit where one is not)."""
    r = REFUSALS[kind]
    wire, metrics, first = refusal_wire(kind)
    core = wire.core
    calls_before = core.calls
    rejected_before = counted(metrics, "sipguard_rejected_total", reason=r.label)
    timed = TimedCore(core, time.thread_time if cpu else time.perf_counter)
    wire.core = timed  # type: ignore[assignment]
    source = r.source
    sent = wire.to_caller if source == CALLER else wire.others.setdefault(source, [])
    status = r.status
    cdrs = 0
    clock = time.perf_counter
    start = clock()
    for n in range(first, first + calls):
        wire.from_peer(source, invite(n, addr=source))
        if status is None:
            ok = not sent
        else:
            ok = len(sent) == 1 and sent[0].startswith(status)
        if not ok:
            raise SystemExit(f"{kind}: INVITE {n} was answered {sent[:1]!r}, not {status!r}")
        sent.clear()
        cdrs += len(core.cdr_out)
        core.cdr_out.clear()
        if r.tick and n % r.tick == 0:
            wire.now += 1.0
    elapsed = clock() - start
    check_refused(kind, wire, metrics, calls, calls_before, rejected_before, cdrs)
    return elapsed, timed.inner


def check_refused(
    kind: str,
    wire: Wire,
    metrics: Metrics,
    calls: int,
    calls_before: int,
    rejected_before: float,
    cdrs: int,
) -> None:
    """What a run of refusals must leave: no call admitted, nothing towards the callee,
    each refusal counted, and the CDRs of SPEC §6 (see :data:`REFUSALS`)."""
    r = REFUSALS[kind]
    wrong = []
    if wire.core.calls != calls_before or wire.to_callee:
        wrong.append("a call was admitted: the refusal path was not measured")
    rejected = counted(metrics, "sipguard_rejected_total", reason=r.label) - rejected_before
    if rejected != calls:
        wrong.append(f"sipguard_rejected_total{{reason={r.label!r}}} counted {rejected:.0f}")
    # a call attempt's end record, at most refused_cdr_rps a trunk and second (the clock
    # stands still), the rest counted as unrecorded; a stranger's attempt has none
    rate = wire.config.limits.refused_cdr_rps
    expected = min(calls, rate) if r.cdr else 0
    unrecorded = counted(metrics, "sipguard_cdr_refusals_unrecorded_total", trunk_in="customers")
    if cdrs != expected or unrecorded != (calls - expected if r.cdr else 0):
        wrong.append(f"{cdrs} end records and {unrecorded:.0f} unrecorded, not {expected}")
    if wrong:
        raise SystemExit(f"{kind}: " + "; ".join(wrong))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=5000, help="calls, or refusals, per run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--refused",
        nargs="?",
        const="overload",
        choices=[*REFUSALS, "all"],
        help="new INVITEs refused instead, of this kind (no kind: overload; all: each)",
    )
    ap.add_argument(
        "--versus-calls",
        type=int,
        default=3000,
        help="with --refused: whole calls per run (withheld, egress-checked) to compare with",
    )
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
    if args.refused is not None:
        return refusals(args)

    def measure(calls: int) -> tuple[float, float]:
        return run(calls, args.egress, args.cpu, args.metrics)

    if args.profile:
        profile(lambda: measure(args.calls))
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


def profile(work: Callable[[], object]) -> None:
    prof = cProfile.Profile()
    prof.enable()
    work()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(30)


def refusals(args: argparse.Namespace) -> int:
    """``--refused``: each kind asked for, then whole calls, and the ratio of the two."""
    kinds = list(REFUSALS) if args.refused == "all" else [args.refused]
    if args.profile:
        for kind in kinds:
            print(f"-- {kind}: {REFUSALS[kind].what}")
            profile(lambda kind=kind: run_refused(args.calls, kind, args.cpu))  # type: ignore[misc]
        return 0
    tune_gc()
    calls = args.versus_calls
    # interleaved, a run of each kind then one of whole calls, so that a shared machine's
    # load weighs on both sides of the ratio alike
    of_kind: dict[str, list[float]] = {kind: [] for kind in kinds}
    cores: list[float] = []
    for _ in range(args.runs):
        for kind in kinds:
            of_kind[kind].append(run_refused(args.calls, kind, args.cpu)[1])
        cores.append(run(calls, egress=True, cpu=args.cpu, metrics=True)[1])
    per_refusal = {k: (statistics.median(c) / args.calls, c) for k, c in of_kind.items()}
    per_call = statistics.median(cores) / calls
    print(f"core                      {core_build()}")
    print(f"refusals per run          {args.calls} (median of {args.runs} runs, core time)")
    print(f"whole calls per run       {calls} (withheld, egress-checked; metrics on in both)")
    runs = ", ".join(f"{c / calls * 1e6:.0f}" for c in cores)
    print(f"core: per whole call      {per_call * 1e6:,.1f} us  (runs: {runs})")
    for kind, (cost, runs_of) in per_refusal.items():
        runs = ", ".join(f"{c / args.calls * 1e6:.1f}" for c in runs_of)
        print(f"{kind}: {REFUSALS[kind].what}")
        print(f"  core: per refusal       {cost * 1e6:,.2f} us  (runs: {runs})")
        print(f"  refusal / whole call    {cost / per_call:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
