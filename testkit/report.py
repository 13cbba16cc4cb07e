"""Load reports: a Markdown file and PNG plots of one or more load runs (``run.py --report``).

    python loadtests/run.py --rate 300 --duration 20 --report loadtests/results/DATE-300cps

What a run leaves in its work folder, and what is plotted from it:

* SIPp's own statistics, written every second (``-trace_stat -fd 1``): ``uac_stat.csv``
  and ``uas_stat.csv``: calls offered (``OutgoingCall(P)``) and completed
  (``SuccessfulCall(P)``) per second, failed calls and retransmissions (both sides);
* SIPp's response times (``-trace_rtt``, ``uac_*_rtt.csv``): INVITE→200 setup time, its
  p50 and p99 per second and over the run;
* the element's CPU seconds and RSS from ``/proc/PID``, sampled every 0.5 s while the
  calls run (:class:`ProcSampler`, ``proc_samples.csv``): CPU in % of one core, RSS in MB.

The report's table holds the figures the runner prints (``run.header()``/``run.row()``,
passed in as text, and the same values from the results), so the plots never disagree
with them. matplotlib is imported only to draw (``pip install -e .[load]``).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
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


class Sampled(Protocol):
    """What :class:`ProcSampler` reads: the element's CPU seconds and ``/proc`` status."""

    def cpu_seconds(self) -> float: ...

    def status(self) -> dict[str, int]: ...


class ProcSampler:
    """Reads an element's CPU seconds and RSS every ``interval`` seconds in a thread, and
    writes them to ``path`` (``t;cpu_s;rss_kb``, ``t`` in epoch seconds) on exit."""

    def __init__(self, element: Sampled, path: Path, interval: float = SAMPLE_SECONDS) -> None:
        self.element = element
        self.path = path
        self.interval = interval
        self.rows: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)

    def _sample(self) -> None:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            cpu = self.element.cpu_seconds()
            rss = self.element.status().get("VmRSS", 0)
            self.rows.append((time.time(), cpu, rss))

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(self.interval):
            self._sample()

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
            w.writerow(["t", "cpu_s", "rss_kb"])
            w.writerows(self.rows)


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


def _figure(title: str, ylabel: str) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
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

    fig, ax = _figure("INVITE → 200 setup time seen by the caller", "ms")
    for pct, style in ((50, "-"), (99, "--")):
        xs, ys = per_second(s.setup_t, s.setup_ms, pct)
        ax.plot(xs, ys, linestyle=style, label=f"p{pct} per second")
        whole = result.get(f"setup_p{pct}_ms")
        if whole is not None:
            ax.axhline(
                whole, color="grey", linestyle=style, alpha=0.6, label=f"p{pct} run: {whole:.0f} ms"
            )
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right")
    made.append(("Setup time p50 and p99", _save(fig, out / f"{prefix}setup.png")))

    import matplotlib.pyplot as plt

    fig, (cpu, rss) = plt.subplots(2, 1, figsize=(8, 5), dpi=100, sharex=True)
    cpu.set_title(f"{result.get('element', 'sipguard')}: CPU and memory during the run")
    cpu.plot(s.proc_t, s.cpu_pct, color="tab:red")
    cpu.set_ylabel("CPU, % of a core")
    cpu.set_ylim(bottom=0)
    cpu.grid(True, alpha=0.3)
    rss.plot(s.proc_t, s.rss_mb, color="tab:purple")
    rss.set_ylabel("RSS, MB")
    rss.set_xlabel("seconds")
    rss.set_ylim(bottom=0)
    rss.grid(True, alpha=0.3)
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
