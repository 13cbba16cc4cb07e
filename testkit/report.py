"""Load reports: a Markdown file and PNG plots of one or more load runs (``run.py --report``).

    python loadtests/run.py --rate 300 --duration 20 --report loadtests/results/DATE-300cps

What a run leaves in its work folder, and what is plotted from it:

* SIPp's own statistics, written every second (``-trace_stat -fd 1``): ``uac_stat.csv``
  and ``uas_stat.csv``: calls offered (``OutgoingCall(P)``) and completed
  (``SuccessfulCall(P)``) per second, failed calls and retransmissions (both sides);
* SIPp's response times (``-trace_rtt``, ``uac_*_rtt.csv``): INVITE→200 setup time, its
  p50 and p99 per second and over the run;
* the element's CPU seconds and RSS from ``/proc/PID``, sampled every 0.5 s while the
  calls run (:class:`ProcSampler`, ``proc_samples.csv``): CPU in % of one core, RSS in MB;
* where the element has ``metrics()`` (sipguard), its event-loop lag probe, read in the
  same samples: the cumulative buckets of ``sipguard_event_loop_lag_seconds`` and the
  ``sipguard_event_loop_lag_max_seconds`` gauge, from which each 0.5 s period gets its
  probes late by more than 10 ms and a bound on its longest pause (the setup-time plot's
  lower panel, next to INVITE→200 over time);
* the machine's speed on the element's core (``speed_core``): in each sample the sampler
  thread, pinned to that core, does a fixed piece of Python work and records the CPU
  time it took (``speed_ms``). It does not depend on the element: when it rises, the
  same work costs more on that core (a busy host, a noisy neighbour of the VM), and so
  does every call. Plotted under CPU and RSS.

The report's table holds the figures the runner prints (``run.header()``/``run.row()``,
passed in as text, and the same values from the results), so the plots never disagree
with them. matplotlib is imported only to draw (``pip install -e .[load]``).
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import itertools
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from testkit.sipp import percentile  # the runner's percentiles: nearest rank

SAMPLES = "proc_samples.csv"
SAMPLE_SECONDS = 0.5

LAG = "sipguard_event_loop_lag_seconds"  # a histogram: how late a 50 ms probe woke
LAG_MAX = "sipguard_event_loop_lag_max_seconds"  # a gauge: the longest lag since start
LAG_BOUNDS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # sipguard's buckets
# the extra columns of proc_samples.csv, after t;cpu_s;rss_kb: the probes counted, the
# cumulative count of each bucket (probes late by at most the bound), the max gauge
LAG_COLUMNS = ("lag_n", *(f"lag_le_{b:g}" for b in LAG_BOUNDS), "lag_max_s")
GOAL_MS = 10.0  # the goal: p99 INVITE→200 and every event-loop pause under 10 ms
SPEED = "speed_ms"  # the column of the speed probe: CPU ms of a fixed piece of work
SPEED_ROUNDS = 4000  # the fixed work's size: about 0.5 ms of one core here


def fixed_work(rounds: int = SPEED_ROUNDS) -> int:
    """The speed probe's work: the interpreter's everyday mix (bytecode, small dicts,
    strings), always the same."""
    n = 0
    for i in range(rounds):
        d = {"a": i, "b": str(i)}
        n += len(str(d["b"]))
    return n


def speed_probe(tries: int = 3) -> float:
    """CPU milliseconds this thread spends on :func:`fixed_work` (never the time it
    waited): the least of ``tries`` runs, so that one interrupted run (its caches cold
    after a switch) is not read as a slow machine, while a slow spell slows all three."""
    best = math.inf
    for _ in range(tries):
        start = time.thread_time()
        fixed_work()
        best = min(best, time.thread_time() - start)
    return best * 1000.0


class Sampled(Protocol):
    """What :class:`ProcSampler` reads: the element's CPU seconds and ``/proc`` status
    (and, where it has one, ``metrics()``: its Prometheus samples, ``{'name{labels}': v}``)."""

    def cpu_seconds(self) -> float: ...

    def status(self) -> dict[str, int]: ...


def lag_fields(metrics: dict[str, float]) -> list[float | None]:
    """The :data:`LAG_COLUMNS` values in ``metrics`` (as :func:`testkit.sipp.scrape_metrics`
    keys them: ``name_bucket{le="0.01"}``), None for each one missing."""
    buckets: dict[float, float] = {}
    prefix = LAG + "_bucket{"
    for key, value in metrics.items():
        if key.startswith(prefix):
            _, _, rest = key.partition('le="')
            with contextlib.suppress(ValueError):
                buckets[float(rest.partition('"')[0])] = value
    return [
        metrics.get(LAG + "_count"),
        *(buckets.get(b) for b in LAG_BOUNDS),
        metrics.get(LAG_MAX),
    ]


class ProcSampler:
    """Reads an element's CPU seconds and RSS every ``interval`` seconds in a thread, and
    writes them to ``path`` (``t;cpu_s;rss_kb``, ``t`` in epoch seconds) on exit.

    An element with a ``metrics()`` method (sipguard's wrapper; not the peers) is scraped
    too, in the same sample: the :data:`LAG_COLUMNS` follow, empty where a scrape failed
    or lacked them. A scrape is one HTTP request to the element's metrics endpoint, which
    sipguard answers on its event loop; a failed one only leaves its cells empty. With
    ``speed_core``, the sampler thread pins itself to that core and each sample ends with
    :func:`speed_probe` (:data:`SPEED`; about 0.3% of the core).
    """

    def __init__(
        self,
        element: Sampled,
        path: Path,
        interval: float = SAMPLE_SECONDS,
        speed_core: int | None = None,
    ) -> None:
        self.element = element
        self.path = path
        self.interval = interval
        self.speed_core = speed_core  # run the speed probe pinned to this core (None: no probe)
        scrape = getattr(element, "metrics", None)
        self._scrape: Callable[[], dict[str, float]] | None = scrape if callable(scrape) else None
        self.rows: list[tuple[float | None, ...]] = []  # t, cpu_s, rss_kb[, LAG_COLUMNS]
        self._pinned = False  # the thread runs on speed_core: its samples carry SPEED
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)

    def _lag(self) -> list[float | None]:
        if self._scrape is None:
            return []
        try:
            return lag_fields(self._scrape())
        except (OSError, ValueError, http.client.HTTPException):  # refused, timed out, cut
            return [None] * len(LAG_COLUMNS)

    def _sample(self) -> None:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            cpu = self.element.cpu_seconds()
            rss = self.element.status().get("VmRSS", 0)
            speed = [speed_probe()] if self._pinned else []
            self.rows.append((time.time(), cpu, rss, *self._lag(), *speed))

    def _run(self) -> None:
        if self.speed_core is not None:
            try:  # this thread only (pid 0: the calling thread on Linux)
                os.sched_setaffinity(0, {self.speed_core})
                self._pinned = True
            except (OSError, ValueError):  # no such core here: no probe
                pass
        self._sample()
        while not self._stop.wait(self.interval):
            self._sample()

    def speed_median(self) -> float | None:
        """The median of the speed probe's readings so far (None: no probe ran)."""
        if not self._pinned:
            return None
        readings = [float(row[-1]) for row in self.rows if row[-1] is not None]
        return percentile(readings, 50) if readings else None

    def __enter__(self) -> ProcSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._sample()
        with self.path.open("w", newline="") as f:
            w = csv.writer(f, delimiter=";")
            w.writerow(
                [
                    "t",
                    "cpu_s",
                    "rss_kb",
                    *(LAG_COLUMNS if self._scrape else ()),
                    *((SPEED,) if self._pinned else ()),
                ]
            )
            w.writerows(["" if v is None else v for v in row] for row in self.rows)


# -- reading a run's files -------------------------------------------------------------


@dataclass
class Series:
    """One run's data over time, ``t`` in seconds from the caller's first statistics row."""

    t: list[float] = field(default_factory=list)
    offered: list[float] = field(default_factory=list)  # calls/s
    completed: list[float] = field(default_factory=list)  # calls/s
    failed: list[int] = field(default_factory=list)  # in the period
    retrans: list[int] = field(default_factory=list)  # uac + uas, in the period
    setup_t: list[float] = field(default_factory=list)  # one per call, when it was set up
    setup_ms: list[float] = field(default_factory=list)
    proc_t: list[float] = field(default_factory=list)
    cpu_pct: list[float] = field(default_factory=list)  # of one core, over the sample period
    rss_mb: list[float] = field(default_factory=list)
    # the event-loop lag probe per sample period, where the element has one (else empty)
    lag_from: list[float] = field(default_factory=list)  # the period's start
    lag_t: list[float] = field(default_factory=list)  # its end
    lag_probes: list[int] = field(default_factory=list)  # probes that woke in the period
    lag_late_5ms: list[int] = field(default_factory=list)  # of those, late by > 5 ms
    lag_late_10ms: list[int] = field(default_factory=list)  # late by > 10 ms
    # the period's longest pause was at most this: the smallest bucket bound holding every
    # probe of the period (nan: no probe woke; beyond the last bucket: the max gauge)
    lag_bound_ms: list[float] = field(default_factory=list)
    lag_max_ms: list[float] = field(default_factory=list)  # the gauge: max since start (nan)
    # the speed probe on the element's core, where it ran: when, and its CPU ms
    speed_t: list[float] = field(default_factory=list)
    speed_ms: list[float] = field(default_factory=list)


def _stat_rows(path: Path) -> list[dict[str, str]]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    lines = [x.rstrip(";") for x in text.splitlines() if x.strip()]
    if len(lines) < 2:
        return []
    head = lines[0].split(";")
    return [dict(zip(head, x.split(";"), strict=False)) for x in lines[1:]]


def _epoch(row: dict[str, str]) -> float:
    """``CurrentTime`` is ``date<TAB>time<TAB>epoch``."""
    return float(row.get("CurrentTime", "0").split("\t")[-1])


def _num(row: dict[str, str], key: str) -> float:
    try:
        return float(row.get(key, "") or 0)
    except ValueError:
        return 0.0


def _opt(row: dict[str, str], key: str) -> float | None:
    try:
        return float(row[key]) if row.get(key) else None
    except ValueError:
        return None


def _lag_period(
    before: dict[str, str], after: dict[str, str]
) -> tuple[int, int, int, float, float] | None:
    """(probes, late > 5 ms, late > 10 ms, bound on the longest pause in ms, max gauge in
    ms) between two samples with the lag columns, from the buckets' differences."""
    bounds = sorted(
        float(k.removeprefix("lag_le_")) for k in after if k.startswith("lag_le_") and after[k]
    )
    keys = ["lag_n", *(f"lag_le_{b:g}" for b in bounds)]
    b0 = [_opt(before, k) for k in keys]
    b1 = [_opt(after, k) for k in keys]
    if 0.005 not in bounds or 0.01 not in bounds or None in b0 or None in b1:
        return None
    d = [int(y or 0) - int(x or 0) for x, y in zip(b0, b1, strict=True)]
    probes, by_bound = d[0], dict(zip(bounds, d[1:], strict=True))
    if probes < 0:  # the element restarted
        return None
    gauge = _opt(after, "lag_max_s")
    max_ms = math.nan if gauge is None else gauge * 1000.0
    covering = [b for b in bounds if by_bound[b] >= probes]
    if probes == 0:
        bound = math.nan
    elif covering:
        bound = covering[0] * 1000.0
    else:  # beyond the last bucket: the gauge is the only bound
        bound = max_ms if gauge is not None else math.inf
    return probes, probes - by_bound[0.005], probes - by_bound[0.01], bound, max_ms


def _caller_rows(path: Path) -> list[tuple[float, float, float, float, float]]:
    """(epoch, offered/s, completed/s, failed, retransmissions) per period of one caller's
    ``-trace_stat`` file; the first row starts the clock and is not a period."""
    rows = _stat_rows(path)
    out: list[tuple[float, float, float, float, float]] = []
    if not rows:
        return out
    prev = _epoch(rows[0])
    for row in rows[1:]:
        now = _epoch(row)
        period = now - prev
        if period < 0.5:  # SIPp's last rows come at its exit, a moment after the last
            continue
        prev = now
        out.append(
            (
                now,
                _num(row, "OutgoingCall(P)") / period,
                _num(row, "SuccessfulCall(P)") / period,
                _num(row, "FailedCall(P)"),
                _num(row, "Retransmissions(P)"),
            )
        )
    return out


def read_run(
    workdir: Path,
    callers: Sequence[str] = ("uac",),
    callee: str = "uas",
    rtt_glob: str = "uac*_rtt.csv",
) -> Series:
    """A :class:`Series` from the files a run left in ``workdir``.

    ``callers``: the SIPp clients whose ``<name>_stat.csv`` are added up second by second
    (the load runner has one, ``uac``; the container harness one per scenario of its mix);
    ``callee``: the SIPp server's ``<name>_stat.csv`` (its retransmissions); ``rtt_glob``:
    the ``-trace_rtt`` files with the setup times, relative to ``workdir``.
    """
    s = Series()
    firsts = [_stat_rows(workdir / f"{name}_stat.csv")[:1] for name in callers]
    starts = [_epoch(rows[0]) for rows in firsts if rows]
    if not starts:
        return s
    t0 = min(starts)
    # every caller's periods, by the second they end in (one caller: one row a second)
    seconds: dict[int, list[float]] = {}
    for name in callers:
        for now, offered, completed, failed, retrans in _caller_rows(workdir / f"{name}_stat.csv"):
            acc = seconds.setdefault(round(now), [0.0, 0.0, 0.0, 0.0])
            for i, value in enumerate((offered, completed, failed, retrans)):
                acc[i] += value
    uas = {round(_epoch(r)): r for r in _stat_rows(workdir / f"{callee}_stat.csv")}
    for second in sorted(seconds):
        offered, completed, failed, retrans = seconds[second]
        s.t.append(second - t0)
        s.offered.append(offered)
        s.completed.append(completed)
        s.failed.append(int(failed))
        peer = uas.get(second, {})
        s.retrans.append(int(retrans + _num(peer, "Retransmissions(P)")))
    for path in sorted(workdir.glob(rtt_glob)):
        for line in path.read_text(errors="replace").splitlines()[1:]:
            parts = line.split(";")
            with contextlib.suppress(ValueError, IndexError):
                s.setup_t.append(float(parts[0]) / 1000.0)
                s.setup_ms.append(float(parts[1]))
    samples = _stat_rows(workdir / SAMPLES)
    for before, after in itertools.pairwise(samples):
        dt = _num(after, "t") - _num(before, "t")
        if dt <= 0:
            continue
        s.proc_t.append(_num(after, "t") - t0)
        s.cpu_pct.append((_num(after, "cpu_s") - _num(before, "cpu_s")) / dt * 100.0)
        s.rss_mb.append(_num(after, "rss_kb") / 1024.0)
        if after.get(SPEED):
            s.speed_t.append(s.proc_t[-1])
            s.speed_ms.append(_num(after, SPEED))
        lag = _lag_period(before, after)
        if lag is not None:
            s.lag_from.append(_num(before, "t") - t0)
            s.lag_t.append(s.proc_t[-1])
            s.lag_probes.append(lag[0])
            s.lag_late_5ms.append(lag[1])
            s.lag_late_10ms.append(lag[2])
            s.lag_bound_ms.append(lag[3])
            s.lag_max_ms.append(lag[4])
    return s


def per_second(
    t: Sequence[float], v: Sequence[float], pct: float
) -> tuple[list[float], list[float]]:
    """The ``pct`` percentile of ``v`` in each whole second of ``t``."""
    buckets: dict[int, list[float]] = {}
    for ti, vi in zip(t, v, strict=True):
        buckets.setdefault(int(ti), []).append(vi)
    xs = sorted(buckets)
    return [x + 0.5 for x in xs], [percentile(buckets[x], pct) or 0.0 for x in xs]


# -- plots -----------------------------------------------------------------------------


def _figure_backend() -> None:
    import matplotlib

    matplotlib.use("Agg")


def _figure(title: str, ylabel: str) -> tuple[Any, Any]:
    _figure_backend()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    ax.set_title(title)
    ax.set_xlabel("seconds")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def _late_total(s: Series) -> str:
    return f"probes late > {GOAL_MS:g} ms: {sum(s.lag_late_10ms)}"


def _latency(s: Series, result: dict[str, Any]) -> Any:
    """Latency over time: INVITE→200 per second above, the event loop's pauses below."""
    _figure_backend()
    import matplotlib.pyplot as plt

    fig, (ax, loop) = plt.subplots(
        2, 1, figsize=(8, 6), dpi=100, sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    ax.set_title("INVITE → 200 setup time seen by the caller")
    ax.set_ylabel("ms")
    ax.grid(True, alpha=0.3)
    for pct, style in ((50, "-"), (99, "--")):
        xs, ys = per_second(s.setup_t, s.setup_ms, pct)
        ax.plot(xs, ys, linestyle=style, label=f"p{pct} per second")
        whole = result.get(f"setup_p{pct}_ms")
        if whole is not None:
            ax.axhline(
                whole, color="grey", linestyle=style, alpha=0.6, label=f"p{pct} run: {whole:.0f} ms"
            )
    ax.axhline(GOAL_MS, color="tab:red", linestyle=":", label=f"goal: p99 < {GOAL_MS:g} ms")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize="small")

    loop.set_xlabel("seconds")
    loop.set_ylabel("pause, ms")
    loop.grid(True, alpha=0.3)
    if not s.lag_t:
        loop.set_title("Event loop: no lag data (the element exports no lag probe)")
        loop.set_yticks([])
        loop.text(0.5, 0.5, "no data", transform=loop.transAxes, ha="center", color="grey")
        return fig
    loop.set_title(
        f"Event loop: longest pause per {SAMPLE_SECONDS:g} s sample and {_late_total(s)}"
    )
    bound = [b if math.isfinite(b) else math.nan for b in s.lag_bound_ms]
    span_x: list[float] = []  # each period drawn over its own span: a step plot, gaps kept
    span_y: list[float] = []
    for start, end, value in zip(s.lag_from, s.lag_t, bound, strict=True):
        if span_x and span_x[-1] != start:
            span_x.append(start)
            span_y.append(math.nan)
        span_x += [start, end]
        span_y += [value, value]
    loop.plot(
        span_x, span_y, color="tab:blue", label="longest pause in the period ≤ (bucket bound)"
    )
    loop.plot(
        s.lag_t, s.lag_max_ms, color="grey", linestyle=":", label="max since sipguard started"
    )
    loop.axhline(GOAL_MS, color="tab:red", linestyle="--", alpha=0.6, label=f"{GOAL_MS:g} ms")
    loop.set_yscale("log")
    seen = [v for v in (*bound, *s.lag_max_ms) if math.isfinite(v)]
    top = max([2 * GOAL_MS, *seen])
    ticks = [b * 1000 for b in LAG_BOUNDS if b * 1000 <= top * 1.01]
    loop.set_yticks(ticks, [f"{t:g}" for t in ticks])
    loop.minorticks_off()
    loop.set_ylim(0.7, top * 12)  # the room above for the legend
    late = loop.twinx()
    marks = [
        ((a + b) / 2, n) for a, b, n in zip(s.lag_from, s.lag_t, s.lag_late_10ms, strict=True) if n
    ]
    late.plot(
        [x for x, _ in marks],
        [n for _, n in marks],
        "v",
        color="tab:red",
        label=f"probes late > {GOAL_MS:g} ms in the period (right)",
    )
    late.set_ylabel(f"probes late > {GOAL_MS:g} ms")
    late.set_ylim(0, max([1, *(n for _, n in marks)]) * 2.2)
    late.yaxis.get_major_locator().set_params(integer=True)
    handles = [*loop.get_legend_handles_labels()[0], *late.get_legend_handles_labels()[0]]
    loop.legend(handles=handles, loc="upper left", fontsize="x-small", ncol=2)
    return fig


def plot_run(s: Series, result: dict[str, Any], out: Path, prefix: str) -> list[tuple[str, str]]:
    """The four plots of one run into ``out``: (caption, file name) each."""
    rate = result.get("rate", 0)
    made: list[tuple[str, str]] = []

    fig, ax = _figure(f"Calls per second: offered vs completed ({rate:g}/s asked)", "calls/s")
    ax.plot(s.t, s.offered, marker=".", label="offered (SIPp uac, OutgoingCall)")
    ax.plot(s.t, s.completed, marker=".", label="completed (SIPp uac, SuccessfulCall)")
    ax.axhline(rate, color="grey", linestyle=":", label="rate asked")
    ax.legend(loc="lower center")
    made.append(("Calls per second offered and completed", _save(fig, out / f"{prefix}calls.png")))

    fig, ax = _figure("Failed calls and retransmissions per second", "per second")
    ax.plot(s.t, s.failed, label=f"failed calls (total {result.get('failed', 0)})")
    ax.plot(
        s.t,
        s.retrans,
        label=f"retransmissions, uac + uas (total {result.get('retransmissions', 0)})",
    )
    ax.set_ylim(bottom=0, top=max([1, *s.failed, *s.retrans]) * 1.2)
    ax.legend(loc="upper right")
    made.append(("Failures and retransmissions", _save(fig, out / f"{prefix}failures.png")))

    made.append(
        (
            "Setup time p50 and p99, and event-loop pauses",
            _save(_latency(s, result), out / f"{prefix}setup.png"),
        )
    )

    import matplotlib.pyplot as plt

    panels = 3 if s.speed_ms else 2
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.5 * panels), dpi=100, sharex=True)
    cpu, rss = axes[0], axes[1]
    cpu.set_title(f"{result.get('element', 'sipguard')}: CPU and memory during the run")
    cpu.plot(s.proc_t, s.cpu_pct, color="tab:red")
    cpu.set_ylabel("CPU, % of a core")
    cpu.set_ylim(bottom=0)
    cpu.grid(True, alpha=0.3)
    rss.plot(s.proc_t, s.rss_mb, color="tab:purple")
    rss.set_ylabel("RSS, MB")
    rss.set_ylim(bottom=0)
    rss.grid(True, alpha=0.3)
    if s.speed_ms:
        speed = axes[2]
        base = percentile(s.speed_ms, 50) or 1.0
        speed.plot(s.speed_t, [v / base for v in s.speed_ms], color="tab:green")
        speed.axhline(1.0, color="grey", linestyle=":")
        speed.set_ylabel("fixed work's cost,\ntimes the run's median")
        speed.set_title(
            "the machine on the element's core: the same work, its CPU time", fontsize=9
        )
        speed.set_ylim(bottom=0)
        speed.grid(True, alpha=0.3)
    axes[-1].set_xlabel("seconds")
    made.append(("CPU and RSS", _save(fig, out / f"{prefix}process.png")))
    return made


# -- the report ------------------------------------------------------------------------

FIGURES: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("rate", "calls/s asked", lambda v: f"{v:g}"),
    ("attempted", "calls attempted", str),
    ("succeeded", "calls succeeded", str),
    ("failed", "calls failed", str),
    ("achieved_cps", "calls/s achieved", lambda v: f"{v:.0f}"),
    ("retransmissions", "SIPp retransmissions (both sides)", str),
    ("setup_p50_ms", "setup p50, ms (INVITE→200)", lambda v: f"{v:.0f}"),
    ("setup_p99_ms", "setup p99, ms", lambda v: f"{v:.0f}"),
    ("cpu_s", "CPU seconds", lambda v: f"{v:.2f}"),
    ("cpu_s_per_1k", "CPU seconds per 1,000 calls", lambda v: f"{v:.3f}"),
    ("peak_rss_kb", "peak RSS, MB", lambda v: f"{v / 1024:.1f}"),
    ("loop_pause_max_ms", "longest event-loop pause, ms", lambda v: f"{v:.0f}"),
)


def write_report(
    out: Path,
    results: Sequence[dict[str, Any]],
    table: str,
    *,
    command: str = "",
    build: str = "",
    setting: str = "",
    series: Sequence[Series] | None = None,
    extra: str = "",
) -> Path:
    """``out/README.md`` and the plots of every run of ``results`` (``asdict(LoadResult)``
    each, with its ``workdir`` still there); ``table`` is what the runner printed.

    ``setting`` replaces the paragraph on where the processes ran (the load runner's by
    default); ``series``, one per result, replaces reading each result's ``workdir`` with
    :func:`read_run`'s defaults; ``extra`` is Markdown put after the figures.
    """
    if series is not None and len(series) != len(results):
        raise ValueError("one series per result")
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# sipguard load test", ""]
    if command:
        lines.append(f"- command: `{command}`")
    lines += [
        f"- when: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- host: {platform.node() or '?'}, {os.cpu_count()} CPUs, Linux {platform.release()}",
    ]
    if build:
        lines.append(f"- sipguard: {build}")
    lines += [
        setting
        or "- SIPp uac → sipguard → SIPp uas on loopback; sipguard pinned to core 1, SIPp to "
        "core 0 (unless `--no-pin`). Setup times are SIPp's (`-trace_rtt`), in steps of "
        "its scheduler (about 4 ms on a VM): 0 means under one step. The figures as the "
        "runner printed them:",
        "",
        "```",
        table.rstrip(),
        "```",
        "",
    ]
    for i, result in enumerate(results):
        label = f"{result.get('element', 'sipguard')} at {result.get('rate', 0):g} calls/s"
        prefix = f"{i + 1}-" if len(results) > 1 else ""
        lines += [f"## {label}", "", "| figure | value |", "|---|---:|"]
        for key, name, fmt in FIGURES:
            value = result.get(key)
            lines.append(f"| {name} | {'-' if value is None else fmt(value)} |")
        lines += [
            f"| duration, s; calls held, ms | {result.get('duration_s', 0):g}; "
            f"{result.get('hold_ms', 0)} |",
            "",
        ]
        if result.get("failures"):
            lines += [f"SIPp failure counters: `{result['failures']}`", ""]
        run = series[i] if series is not None else read_run(Path(result.get("workdir", "")))
        if run.speed_ms:
            base = percentile(run.speed_ms, 50) or 0.0
            worst = max(run.speed_ms)
            lines += [
                f"The machine on sipguard's core (a fixed piece of Python work every "
                f"{SAMPLE_SECONDS:g} s, its CPU time): median {base:.2f} ms, slowest "
                f"{worst:.2f} ms ({worst / base if base else 0:.2f} times); periods 25% or more "
                f"over the median: {sum(v >= 1.25 * base for v in run.speed_ms)} of "
                f"{len(run.speed_ms)}.",
                "",
            ]
        if run.lag_t:
            lines += [
                f"Event loop (its {SAMPLE_SECONDS:g} s samples of sipguard's 50 ms lag probe): "
                f"{_late_total(run)} of {sum(run.lag_probes)}, > 5 ms: "
                f"{sum(run.lag_late_5ms)}; the longest pause at most "
                f"{max((b for b in run.lag_bound_ms if not math.isnan(b)), default=0):g} ms.",
                "",
            ]
        for caption, name in plot_run(run, result, out, prefix):
            lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    if extra:
        lines += [extra.rstrip(), ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


# -- goodput under overload (run.py --goodput) ------------------------------------------


def plot_goodput(points: Sequence[dict[str, Any]], capacity: float, path: Path) -> str:
    """Calls completed per second against calls offered per second, one point per run
    (``offered_cps``, ``achieved_cps`` and ``factor`` each), with the ideal: everything
    completed up to the capacity, the capacity beyond it."""
    fig, ax = _figure(
        f"Goodput: calls completed vs offered (capacity {capacity:g}/s)", "completed calls/s"
    )
    ax.set_xlabel("offered calls/s (placed by SIPp)")
    xs = [float(p["offered_cps"]) for p in points]
    ys = [float(p["achieved_cps"]) for p in points]
    top = max([capacity, *xs]) * 1.05
    ax.plot([0, capacity, top], [0, capacity, capacity], color="grey", linestyle=":", label="ideal")
    ax.axhline(0.9 * capacity, color="tab:red", linestyle="--", alpha=0.5, label="90% of capacity")
    ax.plot(xs, ys, marker="o", label="sipguard")
    for p, x, y in zip(points, xs, ys, strict=True):
        ax.annotate(f"{p['factor']:g}x", (x, y), textcoords="offset points", xytext=(4, -12))
    ax.set_xlim(left=0, right=top)
    ax.set_ylim(bottom=0, top=max([capacity, *ys]) * 1.15)
    ax.legend(loc="lower right")
    return _save(fig, path)


def write_goodput_report(
    out: Path,
    points: Sequence[dict[str, Any]],
    capacity: float,
    table: str,
    *,
    command: str = "",
    build: str = "",
) -> Path:
    """``out/README.md`` and ``out/goodput.png`` for :func:`plot_goodput`'s points;
    ``table`` is what the runner printed."""
    out.mkdir(parents=True, exist_ok=True)
    factors = ", ".join(f"{float(p['factor']):g}x" for p in points)
    lines = ["# sipguard goodput under overload", ""]
    if command:
        lines.append(f"- command: `{command}`")
    lines += [
        f"- when: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- host: {platform.node() or '?'}, {os.cpu_count()} CPUs, Linux {platform.release()}",
    ]
    if build:
        lines.append(f"- sipguard: {build}")
    lines += [
        f"- capacity given: {capacity:g} calls/s; runs at {factors} of it."
        " Offered is what the SIPp uac placed (it falls short of the rate asked when "
        "SIPp itself runs out of CPU); completed is the calls it saw succeed per second of "
        "placing. The figures as the runner printed them:",
        "",
        "```",
        table.rstrip(),
        "```",
        "",
        "![Goodput](" + plot_goodput(points, capacity, out / "goodput.png") + ")",
        "",
    ]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path
