"""sipguard beside Kamailio through the same SIPp runs, and sipguard's goodput under overload.

Used by ``python loadtests/run.py --versus kamailio`` and ``--goodput`` (issue 19, "What
it must show"):

    python loadtests/run.py --versus kamailio --rate 1000 --duration 20
    python loadtests/run.py --versus kamailio --rate 1000 --duration 20 --repeat 3
    python loadtests/run.py --goodput 1500 --duration 10 --report DIR

**The elements.** Debian's ``kamailio`` (5.6), started by :class:`testkit.kamailio.Kamailio`
in the foreground with a private runtime directory, from one of two committed
configurations (``loadtests/kamailio/``), each given the callee's address as the define
``CALLEE`` and listening where sipguard would (``-l udp:127.0.0.1:PORT``), with
:data:`CHILDREN` UDP workers:

* ``minimal.cfg``: a minimal stateful proxy (``tm``, ``sl``, ``rr``, ``maxfwd``), every call
  record-routed to the callee;
* ``privacy.cfg``: a privacy proxy written for this comparison: the CLIR code stripped
  from the R-URI, ``From`` anonymised with ``uac`` (restored in the dialog with
  ``dialog``), identity headers removed with ``textops``, the topology masked with
  ``topoh`` (Call-ID included).

sipguard runs as in every load run (:func:`testkit.load.run_load`: compiled unless
``--pure``, privacy on the untrusted customer trunk, file CDRs). All three are pinned to
core 1 and both SIPp processes to core 0, through :func:`testkit.load.run_element`: the same
uac, uas, call count, rate and hold.

**The calls.** The caller is ``loadtests/scenarios/uac-withheld.xml``: every call withheld
by the escaped CLIR code (``-s %2331%230201234567``) from +31201234567, held ``hold_ms``;
its ACK and BYE follow the 200's route set and Contact (``rrs``), so that they cross the
record-routing proxy as they cross the B2BUA. The callee is SIPp's built-in ``uas`` with
the request's ``Record-Route`` copied into its responses (RFC 3261 §12.1.1; the built-in
leaves it out, so a proxy's ACK and BYE would go round it) and ``transport=udp`` in its
Contact (:func:`record_route_uas`).

**Interleaved.** At each rate, each repeat runs the three one after the other, the order
turned by one at every repeat (minimal, privacy, sipguard; privacy, sipguard, minimal;
...), so that the VM's drift moves all of them alike. A row per run, then per rate the
ratios of sipguard to each Kamailio: CPU seconds per call and p99 setup time (medians of
the runs, and the range of the per-repeat ratios), and the failed calls of each.

**Goodput** (:func:`goodput`): sipguard alone at 1, 2 and 5 times (``factors``) a capacity
given in calls/s, with the load runner's usual caller (SIPp's built-in ``uac``): calls
completed per second against calls offered per second, and a PNG plot
(:func:`testkit.report.write_goodput_report`). Offered is what SIPp placed: on this
2-core machine one SIPp process cannot place several thousand calls/s while it also
answers them, so the highest factor may offer less than it asks (the table says so).

These are measurements, noisy on a shared VM: nothing is asserted on them.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from testkit.kamailio import Kamailio, KamailioError, children_of, kamailio_available
from testkit.load import LoadResult, peer_setup, run_element, run_load, say
from testkit.sipp import CALLEE_IP, REPO, SIPGUARD_IP, SIPP, Setup, proc_status_kb
from testkit.sippy import callee_byes

CONFIGS = {
    "kamailio minimal": REPO / "loadtests" / "kamailio" / "minimal.cfg",
    "kamailio privacy": REPO / "loadtests" / "kamailio" / "privacy.cfg",
}
SIPGUARD = "sipguard"
# One UDP worker (-n 1), on the one core Kamailio is pinned to: with two, a 180 and the
# 200 that follows it at once are relayed by two workers and often reach the caller in
# the wrong order (half the calls failed at 1,000/s), and one core gains nothing from a
# second worker. Its timer processes still run beside it.
CHILDREN = 1
# shared memory (-m), in MB: tm keeps each transaction some seconds after it ends; 64 MB
# ran out at 1,000 calls/s ("could not allocate shared memory", 500 to the caller)
SHM_MB = 1024
KAMAILIO_CPU = (1,)  # the core sipguard is pinned to in run.py
UAC_WITHHELD = REPO / "loadtests" / "scenarios" / "uac-withheld.xml"
WITHHELD = "%2331%230201234567"  # #31# escaped, then the national number
DEFAULT_FACTORS = (1.0, 2.0, 5.0)


class VersusError(RuntimeError):
    pass


def record_route_uas(directory: Path) -> Path:
    """SIPp's built-in ``uas`` (``sipp -sd uas``) with the request's ``Record-Route`` in
    every response and ``transport=udp`` in its Contact.

    A UAS copies the Record-Route of the request into its responses (RFC 3261 §12.1.1):
    the built-in does not, so the caller would send its ACK and BYE past a record-routing
    proxy (or to the proxy without a Route, which it cannot place). sipguard, a B2BUA,
    sends none: for it the line is left out (SIPp drops a ``[last_*]`` line whose header
    is absent). ``transport=udp`` as :func:`testkit.sippy.lowercase_uas` has it. The file
    is named ``uas.xml`` so that SIPp names its trace files as for the built-in.
    """
    # (sipp -sd exits with 99, "normal exit without calls processed")
    text = subprocess.run(
        [SIPP, "-sd", "uas"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    lines: list[str] = []
    for line in text.splitlines():
        lines.append(line.replace(";transport=[transport]>", ";transport=udp>"))
        if line.strip() == "[last_Via:]":
            lines.append(line.replace("[last_Via:]", "[last_Record-Route:]"))
    fixed = "\n".join(lines) + "\n"
    if "<scenario" not in fixed or "[last_Record-Route:]" not in fixed:
        raise VersusError("sipp -sd uas: no [last_Via:] line found")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "uas.xml"
    path.write_text(fixed)
    return path


class KamailioElement:
    """A :class:`testkit.kamailio.Kamailio` as the load runner's element.

    Its memory is that of all its processes: the private memory of each (``RssAnon``)
    plus the shared memory and file pages once (their largest ``RssShmem``/``RssFile``),
    as every worker maps the same shared segment. ``VmHWM`` is the highest such sum seen
    (each process's own high-water mark cannot be added up).
    """

    def __init__(self, kamailio: Kamailio) -> None:
        self.kamailio = kamailio
        self.peak_kb = 0

    def start(self) -> KamailioElement:
        self.kamailio.start()
        return self

    def stop(self) -> int | None:
        return self.kamailio.stop()

    def cpu_seconds(self) -> float:
        return self.kamailio.cpu_seconds()

    def status(self) -> dict[str, int]:
        anon = shared = files = 0
        for pid in [self.kamailio.pid, *children_of(self.kamailio.pid)]:
            with contextlib.suppress(OSError, ValueError):
                st = proc_status_kb(pid)
                anon += st.get("RssAnon", 0)
                shared = max(shared, st.get("RssShmem", 0))
                files = max(files, st.get("RssFile", 0))
        rss = anon + shared + files
        self.peak_kb = max(self.peak_kb, rss)
        return {"VmRSS": rss, "VmHWM": self.peak_kb}


def kamailio_element(config: Path, setup: Setup, *, pin: bool = True) -> KamailioElement:
    """Kamailio from ``config`` where sipguard would listen, forwarding to the callee."""
    return KamailioElement(
        Kamailio(
            config,
            setup.workdir / "kamailio",
            sip_addr=(SIPGUARD_IP, setup.sip_port),
            defines={"CALLEE": f"sip:{CALLEE_IP}:{setup.callee_port}"},
            listen=[f"udp:{SIPGUARD_IP}:{setup.sip_port}"],
            children=CHILDREN,
            shm_mb=SHM_MB,
            cpus=KAMAILIO_CPU if pin else None,
        )
    )


def run_kamailio_load(
    label: str,
    rate: float,
    duration_s: float,
    hold_ms: int = 1000,
    *,
    workdir: Path,
    uas_scenario: Path,
    pin: bool = True,
    quiet: bool = False,
) -> LoadResult:
    """One run of the withheld caller through Kamailio with the configuration ``label``."""
    setup = peer_setup(workdir)
    result = run_element(
        kamailio_element(CONFIGS[label], setup, pin=pin),
        setup,
        rate,
        duration_s,
        hold_ms,
        pin=pin,
        quiet=quiet,
        label=label,
        uas_scenario=uas_scenario,
        uac_scenario=UAC_WITHHELD,
        service=WITHHELD,
    )
    result.writes_cdrs = False
    return result


# -- the table ---------------------------------------------------------------------------


@dataclass
class Run:
    element: str
    repeat: int
    result: LoadResult
    callee_byes: int | None = None

    @property
    def failed_pct(self) -> float | None:
        r = self.result
        return r.failed / r.attempted * 100 if r.attempted else None

    @property
    def cpu_pct(self) -> float | None:
        """CPU in % of one core over the time calls were placed and held."""
        r = self.result
        busy = r.placing_s + r.hold_ms / 1000
        return r.cpu_s / busy * 100 if r.placing_s else None


COLUMNS = (
    ("rate/s", 6),
    ("element", 16),
    ("attempted", 9),
    ("succeeded", 9),
    ("failed", 6),
    ("failed %", 8),
    ("BYE@uas", 7),
    ("calls/s", 7),
    ("p50 ms", 6),
    ("p99 ms", 6),
    ("cpu %", 6),
    ("cpu s/1k", 8),
    ("peak MB", 7),
)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def header() -> str:
    return "  ".join(t.rjust(w) for t, w in COLUMNS)


def run_row(v: Run) -> str:
    r = v.result
    cells = (
        f"{r.rate:g}",
        v.element,
        str(r.attempted),
        str(r.succeeded),
        str(r.failed),
        _fmt(v.failed_pct, ".2f"),
        _fmt(v.callee_byes, "d"),
        f"{r.achieved_cps:.0f}",
        _fmt(r.setup_p50_ms, ".0f"),
        _fmt(r.setup_p99_ms, ".0f"),
        _fmt(v.cpu_pct, ".1f"),
        _fmt(r.cpu_s_per_1k, ".3f"),
        f"{r.peak_rss_kb / 1024:.1f}",
    )
    line = "  ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True))
    notes = []
    if r.failures:
        notes.append(",".join(f"{k.replace('(C)', '')}={n}" for k, n in r.failures.items()))
    if r.udp_drops:
        notes.append(f"udp drops {r.udp_drops}")
    return line + ("  " + "; ".join(notes) if notes else "")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _per_speed(v: Run) -> float | None:
    """CPU per 1,000 calls over the median CPU ms of the speed probe in the same run."""
    return _ratio(v.result.cpu_s_per_1k, v.result.speed_ms)


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summary(runs: Sequence[Run]) -> list[str]:
    """Per rate and Kamailio configuration: sipguard's CPU per call and p99 setup time
    over Kamailio's (the ratio of the medians, and the range of the per-repeat ratios),
    and the failed calls of both (median %)."""
    out: list[str] = []
    rates = sorted({v.result.rate for v in runs})
    for rate in rates:
        at = [v for v in runs if v.result.rate == rate]
        mine = {v.repeat: v for v in at if v.element == SIPGUARD}
        for label in CONFIGS:
            theirs = {v.repeat: v for v in at if v.element == label}
            if not mine or not theirs:
                continue
            parts = []
            figures: tuple[tuple[str, Callable[[Run], float | None]], ...] = (
                ("CPU per call", lambda v: v.result.cpu_s_per_1k),
                # the same, each run's CPU over the machine's speed during it (the speed
                # probe on the element's core): a host that slows for one element's run
                # and not the other's moves this one less
                ("CPU per call / machine speed", _per_speed),
                ("p99 setup", lambda v: v.result.setup_p99_ms),
            )
            for what, get in figures:
                med = _ratio(
                    _median([get(v) for v in mine.values()]),
                    _median([get(v) for v in theirs.values()]),
                )
                pairs = [
                    x
                    for x in (_ratio(get(mine[i]), get(theirs[i])) for i in mine if i in theirs)
                    if x is not None
                ]
                if get is _per_speed and med is None:
                    continue  # no speed probe in these runs (unpinned): not said at all
                spread = f" ({min(pairs):.2f}-{max(pairs):.2f})" if len(pairs) > 1 else ""
                parts.append(f"{what} {_fmt(med, '.2f')}{spread}")
            failed = (
                f"failed calls {_fmt(_median([v.failed_pct for v in mine.values()]), '.2f')}% "
                f"vs {_fmt(_median([v.failed_pct for v in theirs.values()]), '.2f')}%"
            )
            n = len(mine)
            out.append(
                f"{rate:g} calls/s, sipguard / {label}"
                + (f" (medians of {n} runs each)" if n > 1 else "")
                + ": "
                + ", ".join(parts)
                + f"; {failed}"
            )
    return out


def versus_kamailio(
    rates: Sequence[float],
    duration_s: float,
    hold_ms: int = 1000,
    *,
    base: Path,
    pin: bool = True,
    repeat: int = 1,
    limits: dict[str, int] | None = None,
    as_json: bool = False,
    quiet: bool = False,
) -> int:
    """``run.py --versus kamailio``: both Kamailio configurations and sipguard through
    the same SIPp runs at each rate, interleaved; a table and the ratios. Exit status 1
    if a sipguard run had 0.1% failed calls or more (Kamailio's failures are reported, not
    judged), 2 if Kamailio is missing or would not start."""
    if not kamailio_available():
        print("kamailio is not installed (Debian's kamailio package)", file=sys.stderr)
        return 2
    uas = record_route_uas(base / "scenarios")
    version = subprocess.run(
        ["kamailio", "-v"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.splitlines()
    print(
        f"{version[0].strip() if version else 'kamailio'}: loadtests/kamailio/"
        f"{{{','.join(p.name for p in CONFIGS.values())}}}, {CHILDREN} UDP worker(s), "
        f"{SHM_MB} MB shared memory"
    )
    print(
        f"SIPp {UAC_WITHHELD.name} (withheld: -s {WITHHELD}) → element → SIPp uas with "
        f"Record-Route; calls held {hold_ms} ms, {duration_s:g} s of calls per run, UDP"
        + ("; element on core 1, SIPp on core 0" if pin else "")
    )
    order = [*CONFIGS, SIPGUARD]
    runs: list[Run] = []
    status = 0
    print(header(), flush=True)
    for rate in rates:
        for i in range(max(1, repeat)):
            turn = i % len(order)
            for element in order[turn:] + order[:turn]:
                workdir = base / f"{element.replace(' ', '-')}-rate-{rate:g}-{i}"
                if element == SIPGUARD:
                    r = run_load(
                        rate,
                        duration_s,
                        hold_ms,
                        workdir=workdir,
                        pin=pin,
                        quiet=quiet,
                        uas_scenario=uas,
                        limits=limits,
                        uac_scenario=UAC_WITHHELD,
                        service=WITHHELD,
                    )
                    status |= 0 if r.ok else 1
                else:
                    try:
                        r = run_kamailio_load(
                            element,
                            rate,
                            duration_s,
                            hold_ms,
                            workdir=workdir,
                            uas_scenario=uas,
                            pin=pin,
                            quiet=quiet,
                        )
                    except KamailioError as e:
                        print(f"{element} could not be run: {e}", file=sys.stderr)
                        return 2
                run = Run(element, i, r, callee_byes(workdir))
                runs.append(run)
                print(run_row(run), flush=True)
    for line in summary(runs):
        print(line)
    if as_json:
        print(
            json.dumps(
                [
                    {"element": v.element, "repeat": v.repeat, "callee_byes": v.callee_byes}
                    | asdict(v.result)
                    for v in runs
                ]
            )
        )
    return status


# -- goodput -----------------------------------------------------------------------------

GOODPUT_COLUMNS = (
    ("factor", 6),
    ("asked/s", 7),
    ("offered/s", 9),
    ("completed/s", 11),
    ("of capacity", 11),
    ("attempted", 9),
    ("succeeded", 9),
    ("failed", 6),
    ("p99 ms", 6),
    ("cpu %", 6),
)


def goodput_header() -> str:
    return "  ".join(t.rjust(w) for t, w in GOODPUT_COLUMNS)


def goodput_row(factor: float, capacity: float, r: LoadResult) -> str:
    busy = r.placing_s + r.hold_ms / 1000
    cells = (
        f"{factor:g}x",
        f"{r.rate:g}",
        f"{r.offered_cps:.0f}",
        f"{r.achieved_cps:.0f}",
        f"{r.achieved_cps / capacity * 100:.0f}%",
        str(r.attempted),
        str(r.succeeded),
        str(r.failed),
        _fmt(r.setup_p99_ms, ".0f"),
        _fmt(r.cpu_s / busy * 100 if r.placing_s else None, ".0f"),
    )
    line = "  ".join(c.rjust(w) for c, (_, w) in zip(cells, GOODPUT_COLUMNS, strict=True))
    notes = []
    if r.emergency_attempted:
        notes.append(f"112: {r.emergency_succeeded} of {r.emergency_attempted} answered")
    if r.offered_cps < 0.95 * r.rate:
        notes.append(f"SIPp placed {r.offered_cps:.0f}/s of {r.rate:g}/s asked")
    if r.failures:
        notes.append(",".join(f"{k.replace('(C)', '')}={n}" for k, n in r.failures.items()))
    return line + ("  " + "; ".join(notes) if notes else "")


# 112 calls per second placed beside every goodput run (SPEC §1.4: never shed, up to the
# reserved capacity): each row says how many of them were answered
GOODPUT_EMERGENCY_RATE = 5.0


def goodput(
    capacity: float,
    duration_s: float,
    hold_ms: int = 1000,
    *,
    base: Path,
    factors: Sequence[float] = DEFAULT_FACTORS,
    pin: bool = True,
    limits: dict[str, int] | None = None,
    report: Path | None = None,
    command: str = "",
    build: str = "",
    as_json: bool = False,
    quiet: bool = False,
) -> int:
    """``run.py --goodput CAPACITY``: sipguard at each factor of ``capacity``; calls
    completed per second against offered (and :data:`GOODPUT_EMERGENCY_RATE` emergency
    calls beside them, answered or not), and with ``report`` its README and plot.
    Exit status 0: these runs overload on purpose, so failed calls are not judged."""
    print(goodput_header(), flush=True)
    points: list[dict[str, float]] = []
    results: list[LoadResult] = []
    for factor in factors:
        rate = capacity * factor
        r = run_load(
            rate,
            duration_s,
            hold_ms,
            workdir=base / f"goodput-{factor:g}x",
            pin=pin,
            quiet=quiet,
            limits=limits,
            emergency_rate=GOODPUT_EMERGENCY_RATE,
        )
        results.append(r)
        print(goodput_row(factor, capacity, r), flush=True)
        points.append(
            {"factor": factor, "offered_cps": r.offered_cps, "achieved_cps": r.achieved_cps}
        )
    if report is not None:
        from testkit.report import write_goodput_report

        table = "\n".join(
            [goodput_header()]
            + [goodput_row(f, capacity, r) for f, r in zip(factors, results, strict=True)]
        )
        out = write_goodput_report(report, points, capacity, table, command=command, build=build)
        say(f"report: {out}", quiet)
    if as_json:
        print(json.dumps([p | asdict(r) for p, r in zip(points, results, strict=True)]))
    return 0
