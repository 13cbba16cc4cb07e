#!/usr/bin/env python3
"""SIPp load runner: SIPp ``uac`` → sipguard → SIPp ``uas`` on loopback, with figures.

    python loadtests/run.py --rate 500 --duration 20            # one run
    python loadtests/run.py --rate 500,1000,2000 --duration 20  # several, one table
    python loadtests/run.py --rate 1000 --repeat 3              # medians of 3 runs
    python loadtests/run.py --find-max --duration 15            # highest rate, < 0.1% failed
    python loadtests/run.py --hold-calls 10000                  # memory per held call
    python loadtests/run.py --versus-sippy --rate 100,150       # sippy, the same runs
    python loadtests/run.py --versus-sippy --rate 150 --repeat 3  # interleaved pairs, median ratio
    python loadtests/run.py --instances 2 --balancer kamailio --rate 500 --duration 15
                            # one sipguard directly, one and two behind Kamailio
    python loadtests/run.py --versus kamailio --rate 1000 --duration 20  # two Kamailio configs
    python loadtests/run.py --goodput 1500 --duration 10 --report DIR    # 1x, 2x, 5x capacity
    python loadtests/run.py --anchor --rate 300,600             # media anchored, and not

A command line over the measuring library :mod:`testkit.load` (the floor relay:
:mod:`testkit.floor`; sippy: :mod:`testkit.sippy`; Kamailio and goodput:
:mod:`testkit.versus_kamailio`), which says what is measured and how.
sipguard runs as in production (privacy enforcement on an untrusted customer trunk,
file CDRs in a temporary directory), pinned to core 1 (``taskset -c 1``); both SIPp
processes are pinned to core 0 with ``-buff_size 4194304`` (``../shared/SIPP-NOTES.md``).
Every process is started here and stopped by its PID; every SIPp run is bounded by
``-m``, ``-timeout`` and a ``timeout`` wrapper.

Printed per run: calls attempted, succeeded, failed; achieved calls/s (succeeded over
the time calls were being placed); SIPp retransmissions (both sides); INVITE→200
setup time p50/p99 seen by the caller (``-trace_rtt``; steps of about 4 ms here, so 0
means under 4 ms); sipguard CPU seconds during the run (``/proc/PID/stat``) and per
1,000 calls; sipguard peak RSS (``VmHWM``). These are measurements, noisy on a shared
VM: compare medians (``--repeat``), never assert them in a test.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testkit.load import (  # noqa: E402
    DEFAULT_FIND_MAX_RATES,
    FAIL_RATIO,
    LoadResult,
    find_max,
    header,
    median_result,
    row,
    run_hold,
    run_load,
    say,
    use_build,
)
from testkit.report import write_report  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--rate",
        default=None,
        help="calls per second; a comma list runs each (default 500; 100,150 with --versus-sippy)",
    )
    p.add_argument("--duration", type=float, default=20.0, help="seconds of calls per run")
    p.add_argument("--hold-ms", type=int, default=1000, help="call duration (ACK→BYE), ms")
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    p.add_argument("--repeat", type=int, default=1, help="runs per rate; medians are printed")
    p.add_argument("--find-max", action="store_true", help="step the rate up (see --rates)")
    p.add_argument(
        "--rates",
        default=",".join(str(r) for r in DEFAULT_FIND_MAX_RATES),
        help="the steps of --find-max",
    )
    p.add_argument("--hold-calls", type=int, default=0, help="hold this many calls up at once")
    p.add_argument("--hold-rate", type=float, default=500, help="rate placing the held calls")
    p.add_argument("--hold-settle", type=float, default=35.0, help="seconds before the RSS read")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--workdir", default=None, help="keep the run's files here")
    p.add_argument(
        "--versus-sippy",
        action="store_true",
        help="install sippy from PyPI in a temporary venv and run it and sipguard\n"
        "through the same SIPp runs at each --rate (testkit/sippy.py)",
    )
    p.add_argument("--sippy-version", default="2.5.0", help="with --versus-sippy")
    p.add_argument(
        "--sipguard-only-rates",
        default="",
        help="with --versus-sippy: rates sipguard alone also runs at (headroom)",
    )
    p.add_argument(
        "--versus-uas",
        choices=("lowercase", "builtin"),
        default="lowercase",
        help="with --versus-sippy: the callee for both elements: SIPp's built-in uas\n"
        "with transport=udp in its Contact (default; sippy 2.5.0 cannot send BYE\n"
        "to transport=UDP), or the built-in uas unchanged",
    )
    p.add_argument(
        "--sippy-cache",
        default=None,
        help="with --versus-sippy: keep sippy's venv under this directory and reuse it",
    )
    p.add_argument(
        "--pure",
        action="store_true",
        help="run sipguard's pure-Python sources; by default the per-message path is\n"
        "compiled with mypyc into build/native first (tools/build_native.py), as\n"
        "./dev.sh run and the container image run it",
    )
    p.add_argument(
        "--overload-queue-kb",
        type=int,
        default=None,
        help="sipguard's limits.overload_queue_kb (load shedding; 0: off; default: its own)",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="run the floor relay (testkit/floor.py: a bare stateless relay on uvloop)\n"
        "instead of sipguard; with --versus-sippy, beside sippy and sipguard in every run",
    )
    p.add_argument(
        "--balancer",
        choices=("none", "kamailio"),
        default="none",
        help="kamailio: at each --rate, one sipguard directly, one behind Kamailio and\n"
        "--instances behind Kamailio (deploy/kamailio/kamailio.cfg; testkit/ha_load.py)",
    )
    p.add_argument("--instances", type=int, default=2, help="with --balancer kamailio")
    p.add_argument(
        "--versus",
        choices=("kamailio",),
        default=None,
        help="run Debian's kamailio with loadtests/kamailio/minimal.cfg and privacy.cfg\n"
        "beside sipguard through the same SIPp runs (withheld calls), interleaved,\n"
        "at each --rate, --repeat times; prints the ratios (testkit/versus_kamailio.py)",
    )
    p.add_argument(
        "--goodput",
        type=float,
        default=None,
        metavar="CAPACITY",
        help="sipguard at --factors times CAPACITY calls/s: calls completed per second\n"
        "vs offered; with --report DIR, a README and goodput.png there",
    )
    p.add_argument("--factors", default="1,2,5", help="with --goodput (default 1,2,5)")
    p.add_argument(
        "--cpu-limit",
        type=float,
        metavar="PERCENT",
        help="cap sipguard at PERCENT of one core (a cgroup v1 CFS quota; root): a smaller\n"
        "capacity, so that one SIPp can offer 5x of it (--find-max, then --goodput)",
    )
    p.add_argument(
        "--anchor",
        action="store_true",
        help="each run twice: as it is, then with every call's media anchored through\n"
        "Debian's rtpengine (media: anchor; rtpengine on the SIPp core), one row each",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    p.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="write a Markdown report with PNG plots of the --rate runs into DIR\n"
        "(testkit/report.py; needs matplotlib: pip install -e .[load])",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.rate is None:
        args.rate = "100,150" if args.versus_sippy else "500"
    pin = not args.no_pin
    # SIGTERM (e.g. from a `timeout` wrapper) unwinds like Ctrl-C, so that every process
    # started here is stopped by its PID on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.report and (args.hold_calls or args.find_max or args.versus_sippy or args.versus):
        print("--report reports the runs of --rate (or --goodput) only", file=sys.stderr)
        return 2
    if args.versus and (args.floor or args.transport != "udp" or args.versus_sippy):
        print("--versus kamailio runs sipguard and Kamailio over UDP only", file=sys.stderr)
        return 2
    if args.floor and (args.hold_calls or args.find_max or args.transport != "udp"):
        print("--floor runs UDP at the rates of --rate only", file=sys.stderr)
        return 2
    if args.anchor and (args.hold_calls or args.find_max or args.versus_sippy or args.floor):
        print("--anchor runs sipguard at the rates of --rate only", file=sys.stderr)
        return 2
    build = ""
    if not args.floor or args.versus_sippy:  # the floor alone starts no sipguard
        build = use_build(pure=args.pure)
        if args.cpu_limit is not None:
            import testkit.load

            testkit.load.CPU_LIMIT_PERCENT = args.cpu_limit
            build += f", capped at {args.cpu_limit:g}% of a core"
        say(f"sipguard: {build}", args.quiet)
    args.limits = (
        None if args.overload_queue_kb is None else {"overload_queue_kb": args.overload_queue_kb}
    )

    tmp: tempfile.TemporaryDirectory[str] | None = None
    if args.workdir:
        base = Path(args.workdir)
        base.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="sipguard-load-")
        base = Path(tmp.name)
    try:
        if args.hold_calls:
            h = run_hold(
                args.hold_calls,
                workdir=base / "hold",
                rate=args.hold_rate,
                settle_s=args.hold_settle,
                pin=pin,
                quiet=args.quiet,
            )

            def kb(v: float | None) -> str:
                return f"{v / 1024:.1f} KB" if v is not None else "-"

            print(
                f"held calls {h.held_calls}/{h.target_calls}  failed {h.failed}\n"
                f"RSS idle {h.rss_idle_kb / 1024:.1f} MB"
                f"  all calls up {h.rss_filled_kb / 1024:.1f} MB"
                f"  {h.settle_s:g} s later {h.rss_held_kb / 1024:.1f} MB"
                f"  peak {h.peak_rss_kb / 1024:.1f} MB\n"
                f"per held call: {kb(h.bytes_per_call)} once settled"
                f" ({kb(h.bytes_per_call_filled)} as the last call came up)"
            )
            if args.json:
                print(json.dumps(asdict(h)))
            return 0 if h.held_calls >= h.target_calls else 1

        if args.balancer == "kamailio":
            from testkit.ha_load import balanced_header, balanced_row, run_balanced

            print(balanced_header(), flush=True)
            found = []
            for rate in (float(x) for x in args.rate.split(",") if x):
                for r in run_balanced(
                    rate,
                    args.duration,
                    args.hold_ms,
                    instances=args.instances,
                    workdir=base / f"balanced-{rate:g}",
                    pin=pin,
                    quiet=args.quiet,
                ):
                    print(balanced_row(r), flush=True)
                    found.append(r)
            if args.json:
                print(json.dumps([asdict(r) for r in found]))
            return 0 if all(r.failed <= FAIL_RATIO * r.attempted for r in found) else 1
        if args.versus == "kamailio":
            from testkit.versus_kamailio import versus_kamailio

            return versus_kamailio(
                [float(x) for x in args.rate.split(",") if x],
                args.duration,
                args.hold_ms,
                base=base,
                pin=pin,
                repeat=args.repeat,
                limits=args.limits,
                as_json=args.json,
                quiet=args.quiet,
            )

        if args.goodput is not None:
            from testkit.versus_kamailio import goodput

            return goodput(
                args.goodput,
                args.duration,
                args.hold_ms,
                base=base,
                factors=[float(x) for x in args.factors.split(",") if x],
                pin=pin,
                limits=args.limits,
                report=Path(args.report) if args.report else None,
                command=" ".join(["python", *sys.argv]) if argv is None else " ".join(argv),
                build=build,
                as_json=args.json,
                quiet=args.quiet,
            )

        if args.versus_sippy:
            from testkit.sippy import versus

            return versus(
                [float(x) for x in args.rate.split(",") if x],
                [float(x) for x in args.sipguard_only_rates.split(",") if x],
                args.duration,
                args.hold_ms,
                base=base,
                pin=pin,
                repeat=args.repeat,
                transport=args.transport,
                sippy_version=args.sippy_version,
                sippy_cache=Path(args.sippy_cache).expanduser() if args.sippy_cache else None,
                callee=args.versus_uas,
                floor=args.floor,
                limits=args.limits,
                as_json=args.json,
                quiet=args.quiet,
            )

        if args.floor:
            from testkit.floor import run_floor_load

            say("the floor relay (testkit/floor.py) instead of sipguard", args.quiet)
        print(header(), flush=True)
        if args.find_max:
            rates = [float(x) for x in args.rates.split(",") if x]
            best, results = find_max(
                rates,
                args.duration,
                args.hold_ms,
                workdir=base,
                transport=args.transport,
                pin=pin,
                quiet=args.quiet,
                on_result=lambda r: print(row(r), flush=True),
                limits=args.limits,
            )
            print(
                f"highest rate with < {FAIL_RATIO:.1%} failed calls "
                f"({args.duration:g} s each, calls held {args.hold_ms} ms): "
                f"{best:g}/s"
                if best is not None
                else "none of the rates passed"
            )
            if args.json:
                print(json.dumps([asdict(r) for r in results]))
            return 0 if best is not None else 1

        everything: list[LoadResult] = []
        status = 0
        for rate in (float(x) for x in args.rate.split(",") if x):
            runs = []
            anchored_runs: list[LoadResult] = []
            for i in range(args.repeat):
                if args.floor:
                    r = run_floor_load(
                        rate,
                        args.duration,
                        args.hold_ms,
                        workdir=base / f"floor-rate-{rate:g}-{i}",
                        pin=pin,
                        quiet=args.quiet,
                    )
                else:
                    r = run_load(
                        rate,
                        args.duration,
                        args.hold_ms,
                        workdir=base / f"rate-{rate:g}-{i}",
                        transport=args.transport,
                        pin=pin,
                        quiet=args.quiet,
                        limits=args.limits,
                    )
                runs.append(r)
                print(row(r), flush=True)
                if args.anchor:
                    anchored = run_load(
                        rate,
                        args.duration,
                        args.hold_ms,
                        workdir=base / f"anchor-rate-{rate:g}-{i}",
                        transport=args.transport,
                        pin=pin,
                        quiet=args.quiet,
                        limits=args.limits,
                        anchor=True,
                    )
                    anchored_runs.append(anchored)
                    print(row(anchored), flush=True)
            if args.repeat > 1:
                print("median " + row(median_result(runs)), flush=True)
                if anchored_runs:
                    print("median " + row(median_result(anchored_runs)), flush=True)
            everything += runs + anchored_runs
            status |= 0 if all(r.ok for r in runs + anchored_runs) else 1
        if args.report:
            table = "\n".join([header(), *(row(r) for r in everything)])
            command = " ".join(["python", *sys.argv]) if argv is None else " ".join(argv)
            out = write_report(
                Path(args.report),
                [asdict(r) for r in everything],
                table,
                command=command,
                build=build,
            )
            say(f"report: {out}", args.quiet)
        if args.json:
            print(json.dumps([asdict(r) for r in everything]))
        return status
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
