"""The soak (issue 15): sipguard carries calls for minutes under a background flood.

SIPp ``uac`` (127.0.0.3, trunk ``customers``) → sipguard → SIPp ``uas`` (127.0.0.2) at
``rate`` calls/s for ``duration`` seconds, each call held ``hold_ms``, while two
:class:`~testkit.attack.Flooder` threads send OPTIONS and BYE at ``flood_rate`` a second
in all, half from an unknown source (127.0.0.48), half from an untrusted trunk's source
(trunk ``rogue``, 127.0.0.47). Every ``sample_s`` seconds sipguard's RSS and open file
descriptors are read from ``/proc/PID`` (``soak_samples.csv``); the load runner's own
sampler (:class:`~testkit.report.ProcSampler`) records CPU and RSS for its plots.

At the end sipguard is stopped with SIGTERM (it drains and writes its CDRs), and every
call SIPp completed must have its ``end`` record: ``lost_cdrs`` is the number of
successful calls without one. The report (:func:`write_soak_report`) is the load runner's
Markdown and plots (:func:`testkit.report.write_report`) plus the soak's own figures, a
table of the samples and a plot of RSS and descriptors over time.

Every process is started here and stopped by its PID; SIPp runs are bounded by ``-m``,
``-timeout`` and a ``timeout`` wrapper; the flooders stop by themselves after
``duration``.
"""

from __future__ import annotations

import contextlib
import csv
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testkit.attack import Flooder, fd_count, flood_requests, rss_kb
from testkit.load import BUFF_SIZE, SIPGUARD_CPU, SIPP_CPU, LoadResult, header, row
from testkit.report import SAMPLES, ProcSampler, write_report
from testkit.sipp import (
    Sipguard,
    percentile,
    read_cdrs,
    uac,
    uas,
    udp_drops,
    write_config,
)

ROGUE = "127.0.0.47"
UNKNOWN = "127.0.0.48"
SOAK_SAMPLES = "soak_samples.csv"
WARMUP_S = 40.0  # calls held and transactions kept (64*T1 = 32 s) reach their steady number


@dataclass
class SoakResult:
    load: LoadResult
    flood_rate: float
    flood_sent: int = 0
    flood_achieved: float = 0.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss kB, fds)
    cdr_end_records: int = 0
    lost_cdrs: int = 0
    rejected: dict[str, float] = field(default_factory=dict)
    sipguard_exit: int | None = None

    def flat(self, warmup_s: float = WARMUP_S, part: float = 0.25) -> tuple[int, int, int, int]:
        """(RSS kB, fds) early and late in the run, medians: what "flat" compares. Early
        is the first ``part`` of the samples after ``warmup_s`` (by then the calls and
        their transactions, 64*T1 = 32 s, are at their steady number), late the last
        ``part``."""
        steady = [s for s in self.samples if s[0] >= warmup_s]
        n = len(steady)
        if n < 4:
            return (0, 0, 0, 0)
        k = max(1, int(n * part))

        def med(xs: list[int]) -> int:
            return sorted(xs)[len(xs) // 2]

        early, late = steady[:k], steady[-k:]
        return (
            med([s[1] for s in early]),
            med([s[1] for s in late]),
            med([s[2] for s in early]),
            med([s[2] for s in late]),
        )


class _Sampler:
    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.rows: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.rows.append((time.monotonic() - t0, rss_kb(self.pid), fd_count(self.pid)))
            self._stop.wait(self.interval)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)


def run_soak(
    *,
    workdir: Path,
    rate: float = 500,
    duration_s: float = 600,
    hold_ms: int = 1000,
    flood_rate: float = 2000,
    sample_s: float = 5.0,
    say: Any = print,
) -> SoakResult:
    setup = write_config(
        workdir,
        overrides={
            "log_level": "warning",
            "trunks": {
                "rogue": {
                    "sources": [f"{ROGUE}/32"],
                    "trusted": False,
                    "route_to": "pbx",
                    "default_cli": "+31201234000",
                }
            },
        },
    )
    total = max(1, int(rate * duration_s))
    bound = int(duration_s + hold_ms / 1000 + 60)
    sg = Sipguard(setup, cpus=SIPGUARD_CPU)
    callee = uas(
        setup, calls=total, timeout_s=bound + 20, trace_msg=False, buff_size=BUFF_SIZE,
        cpus=SIPP_CPU,
    )  # fmt: skip
    caller = uac(
        setup, calls=total, rate=rate, hold_ms=hold_ms, timeout_s=bound, trace_msg=False,
        trace_rtt=True, buff_size=BUFF_SIZE, cpus=SIPP_CPU,
    )  # fmt: skip
    dest = ("127.0.0.1", setup.sip_port)
    target = f"100@127.0.0.1:{setup.sip_port}"
    floods = [
        Flooder(
            source,
            dest,
            flood_requests("OPTIONS", source, 5000, target)
            + flood_requests("BYE", source, 5000, target),
            flood_rate / 2,
            duration_s,
        )
        for source in (UNKNOWN, ROGUE)
    ]
    load = LoadResult(rate, duration_s, hold_ms, "udp", workdir=str(workdir))
    result = SoakResult(load, flood_rate)
    try:
        sg.start()
        callee.start()
        callee.wait_listening()
        time.sleep(0.5)
        cpu0 = sg.cpu_seconds()
        say(f"soak: {total} calls at {rate:g}/s for {duration_s:g} s, flood {flood_rate:g}/s")
        t0 = time.monotonic()
        with _Sampler(sg.pid, sample_s) as sampler, ProcSampler(sg, workdir / SAMPLES):
            caller.start()
            for f in floods:
                f.start()
            res = caller.wait(bound + 30)
        wall = time.monotonic() - t0
        for f in floods:
            f.stop()
        result.samples = sampler.rows
        load.cpu_s = sg.cpu_seconds() - cpu0
        load.peak_rss_kb = sg.status().get("VmHWM", 0)
        load.udp_drops = {
            k: v for k, v in udp_drops().items() if k == f"127.0.0.1:{setup.sip_port}"
        }
        with contextlib.suppress(OSError):
            m = sg.metrics()
            result.rejected = {
                k.partition("reason=")[2][1:-2]: v
                for k, v in m.items()
                if k.startswith("sipguard_rejected_total{")
            }
        callee_res = callee.stop()
        result.sipguard_exit = sg.stop(grace=60)
    finally:
        for f in floods:
            with contextlib.suppress(Exception):
                f.stop()
        for p in (caller, callee, sg):
            with contextlib.suppress(Exception):
                p.stop()
    load.attempted = res.created
    load.succeeded = res.successful
    load.failed = res.failed + max(0, res.created - res.successful - res.failed)
    load.uac_exit = res.returncode
    load.failures = res.failure_counters()
    load.retransmissions = res.retransmissions + callee_res.retransmissions
    load.achieved_cps = res.successful / max(wall - hold_ms / 1000.0, 1e-3)
    load.setup_p50_ms = percentile(res.rtts_ms, 50)
    load.setup_p99_ms = percentile(res.rtts_ms, 99)
    load.setup_max_ms = max(res.rtts_ms) if res.rtts_ms else None
    if res.successful:
        load.cpu_s_per_1k = load.cpu_s / res.successful * 1000.0
    ends = [
        r
        for r in read_cdrs(setup.cdr_dir)
        if r["kind"] == "end" and r.get("trunk_in") == "customers" and r.get("answer")
    ]
    result.cdr_end_records = load.cdr_end_records = len(ends)
    result.lost_cdrs = max(0, res.successful - len(ends))
    result.flood_sent = sum(f.sent for f in floods)
    elapsed = max((f.elapsed for f in floods), default=0.0)
    result.flood_achieved = result.flood_sent / elapsed if elapsed else 0.0
    with (workdir / SOAK_SAMPLES).open("w", newline="") as fh:
        w = csv.writer(fh, delimiter=";")
        w.writerow(["t_s", "rss_kb", "fds"])
        w.writerows(result.samples)
    return result


def write_soak_report(out: Path, result: SoakResult, command: str) -> Path:
    """The load runner's report of the run, then the soak's own section."""
    table = header() + "\n" + row(result.load)
    path = write_report(out, [asdict(result.load)], table, command=command)
    rss0, rss1, fd0, fd1 = result.flat()
    lines = [
        "",
        "## Soak",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| background flood asked, achieved (requests/s) | {result.flood_rate:g}, "
        f"{result.flood_achieved:.0f} |",
        f"| flood requests sent | {result.flood_sent} |",
        f"| calls completed (SIPp) | {result.load.succeeded} |",
        f"| their CDR end records | {result.cdr_end_records} |",
        f"| lost CDRs | {result.lost_cdrs} |",
        f"| RSS, MB: after the {WARMUP_S:.0f} s warm-up, at the end (medians of a quarter "
        f"of the samples each) | {rss0 / 1024:.1f}, {rss1 / 1024:.1f} |",
        f"| open descriptors: after the warm-up, at the end | {fd0}, {fd1} |",
        f"| sipguard exit status after SIGTERM | {result.sipguard_exit} |",
        f"| refused by reason | `{ {k: int(v) for k, v in result.rejected.items()} }` |",
        "",
    ]
    plot = _plot(out, result.samples)
    if plot:
        lines += ["### RSS and open descriptors", "", f"![RSS and descriptors]({plot})", ""]
    lines += ["### Samples (every few seconds)", "", "| t, s | RSS, MB | fds |", "|---:|---:|---:|"]
    step = max(1, len(result.samples) // 40)
    for t, kb, fds in result.samples[::step]:
        lines.append(f"| {t:.0f} | {kb / 1024:.1f} | {fds} |")
    with path.open("a") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def _plot(out: Path, samples: list[tuple[float, int, int]]) -> str | None:
    if not samples:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ts = [s[0] for s in samples]
    ax.plot(ts, [s[1] / 1024 for s in samples], label="RSS, MB", color="tab:blue")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS, MB")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(ts, [s[2] for s in samples], label="open fds", color="tab:orange")
    ax2.set_ylabel("open file descriptors")
    ax2.set_ylim(0, max(s[2] for s in samples) * 1.5 + 1)
    fig.legend(loc="lower right")
    fig.tight_layout()
    name = "soak.png"
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    return name
