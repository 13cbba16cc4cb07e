#!/usr/bin/env python3
"""The soak (issue 15): sipguard at a steady rate with a background flood, for minutes.

    python loadtests/soak.py                                   # 500 calls/s, 600 s
    python loadtests/soak.py --rate 250 --duration 60          # a short proof run
    python loadtests/soak.py --flood-rate 5000 --sample 2

A command line over :mod:`testkit.soak`, which says what runs and what is measured:
SIPp ``uac`` → sipguard → SIPp ``uas`` at ``--rate`` (default 500/s, about half the
sustainable rate on these 2-core machines), calls held ``--hold-ms``, while OPTIONS and
BYE arrive at ``--flood-rate`` a second from an unknown source and from an untrusted
trunk's source. sipguard's RSS and open descriptors are sampled every ``--sample``
seconds. At the end: zero lost CDRs (every call SIPp completed has its ``end`` record),
and a Markdown report with plots in ``--out`` (default
``loadtests/results/soak-<date>/``). The exit status is 0 when no call failed, no CDR
was lost and RSS and descriptors were flat (the last quarter of the samples within
10% + 8 MB, and 10 descriptors, of the first quarter after a 40 s warm-up).

Not run in CI (it is minutes long); the 10-minute run belongs on a quiet machine.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testkit.soak import run_soak, write_soak_report  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=float, default=500, help="calls per second (500)")
    p.add_argument("--duration", type=float, default=600, help="seconds of calls (600)")
    p.add_argument("--hold-ms", type=int, default=1000, help="each call held, ms (1000)")
    p.add_argument("--flood-rate", type=float, default=2000, help="flood requests/s (2000)")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between samples (5)")
    p.add_argument("--out", type=Path, default=None, help="report folder")
    p.add_argument("--workdir", type=Path, default=None, help="keep SIPp's and sipguard's files")
    args = p.parse_args(argv)
    out = args.out or REPO / "loadtests" / "results" / f"soak-{time.strftime('%Y-%m-%d')}"
    command = "python loadtests/soak.py " + shlex.join(list(argv or sys.argv[1:]))
    with tempfile.TemporaryDirectory(prefix="sipguard-soak-") as tmp:
        workdir = args.workdir or Path(tmp)
        result = run_soak(
            workdir=workdir,
            rate=args.rate,
            duration_s=args.duration,
            hold_ms=args.hold_ms,
            flood_rate=args.flood_rate,
            sample_s=args.sample,
        )
        report = write_soak_report(out, result, command.strip())
    load = result.load
    rss0, rss1, fd0, fd1 = result.flat()
    print(
        f"calls: {load.succeeded} ok, {load.failed} failed; setup p99 {load.setup_p99_ms} ms\n"
        f"flood: {result.flood_achieved:.0f}/s ({result.flood_sent} sent)\n"
        f"CDRs: {result.cdr_end_records} end records, {result.lost_cdrs} lost\n"
        f"RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MB, fds {fd0} -> {fd1}\n"
        f"report: {report}"
    )
    flat = rss1 - rss0 <= rss0 // 10 + 8192 and fd1 - fd0 <= 10
    return 0 if load.failed == 0 and result.lost_cdrs == 0 and flat else 1


if __name__ == "__main__":
    sys.exit(main())
