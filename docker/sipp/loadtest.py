#!/usr/bin/env python3
"""The SIPp image's load test: ``loadtest.py callee`` or ``loadtest.py caller``.

The layout is that of the test suite's SIPp harness (``testkit/sipp.py``), on the host's
network: the caller on 127.0.0.3 (trunk ``customers``), sipguard on 127.0.0.1, the callee
on 127.0.0.2 (trunk ``pbx``), as ``config/sipguard.yaml`` has them. The image holds this
file, the scenarios and ``testkit`` where the repository has them (``docker/sipp/``,
``loadtests/scenarios/``, ``testkit/``), so the paths below are the repository's.

``callee`` runs one SIPp server (``loadtests/scenarios/uas-loadtest.xml``) until stopped.

``caller`` waits until sipguard's ``/readyz`` answers and the callee listens, then runs one
SIPp client per scenario of the mix at the same time, each at its share of the rate, for
the duration, and writes into ``$LOAD_REPORT`` the load report of ``loadtests/run.py
--report`` (:func:`testkit.report.write_report`): ``README.md`` with the runner's figures
(:func:`testkit.load.row`) and the plots ``calls.png`` (calls/s offered vs completed),
``failures.png`` (failed calls and retransmissions), ``setup.png`` (INVITE→200 p50/p99)
and ``process.png`` (sipguard's CPU and RSS over the run), a table per scenario and
sipguard's counters; ``results.json`` (the same figures); and under ``sipp/`` what it was
made from: SIPp's statistics (``<scenario>_stat.csv``, ``callee_stat.csv``), response
times (``<scenario>/*_rtt.csv``), errors, and the CPU and RSS samples
(``proc_samples.csv``). Its exit status is 0 when every call of every scenario was placed
and completed, 1 otherwise.

**sipguard's CPU and RSS** are read from sipguard's own ``/metrics`` every second:
``process_cpu_seconds_total`` and ``process_resident_memory_bytes``, which the process
reads from its ``/proc/self`` (utime + stime and the resident set, as the load runner
reads ``/proc/PID`` on the host). That needs no shared PID namespace, no privilege and no
access to the container's cgroup, whose ``cpu.stat`` would also count the health check's
processes; it is what an operator's Prometheus sees. It costs sipguard one scrape a
second. The resolution is the kernel's tick (10 ms of CPU), and the peak RSS is the
highest sample (the host runner's ``VmHWM`` is not exported).

Scenarios (``LOAD_MIX``, shares in percent of ``LOAD_RATE``):

* ``plain``: an answered call, held ``LOAD_HOLD_MS``;
* ``privacy``: the same, withheld by ``#31#`` (escaped and raw) or ``Privacy: id``, and
  presented by ``Privacy: none``, in turn;
* ``emergency``: 112, plain, with ``Privacy: id`` and with ``#31#`` (always presented);
* ``cancel``: CANCELled as soon as it rings (the callee rings 500 ms before it answers).

Environment (defaults in brackets): ``LOAD_RATE`` calls/s in all [10], ``LOAD_DURATION`` s
[20], ``LOAD_HOLD_MS`` [1000], ``LOAD_MIX`` [plain:50,privacy:20,emergency:10,cancel:20],
``LOAD_REPORT`` [/report], ``SIPGUARD_SIP`` [127.0.0.1:5060], ``SIPGUARD_METRICS``
[http://127.0.0.1:9460], ``CALLER_ADDRESS`` [127.0.0.3], ``CALLEE_ADDRESS`` [127.0.0.2],
``CALLEE_PORT`` [5080], ``SIPGUARD_IMAGE`` (named in the report) [sipguard]. Every SIPp
run is bounded by ``-m``, ``-timeout`` and a ``timeout`` wrapper.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]  # the repository, or /opt/sipguard-load
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testkit.load import LoadResult, header, row  # noqa: E402
from testkit.report import SAMPLES, ProcSampler, read_run, write_report  # noqa: E402
from testkit.sipp import percentile, udp_drops  # noqa: E402

SCENARIOS = Path(os.environ.get("LOAD_SCENARIOS") or REPO / "loadtests" / "scenarios")
DATA = "sipp"  # the report's folder of SIPp's files and the samples
SAMPLE_SECONDS = 1.0

# name: (scenario file, injection file or None, dialled string for -s)
MIX: dict[str, tuple[str, str | None, str]] = {
    "plain": ("uac-call.xml", "plain.csv", "0201234567"),
    "privacy": ("uac-call.xml", "privacy.csv", "0201234567"),
    "emergency": ("uac-call.xml", "emergency.csv", "112"),
    "cancel": ("uac-cancel.xml", None, "0201234568"),
}
DEFAULT_MIX = "plain:50,privacy:20,emergency:10,cancel:20"

# sipguard's counters worth a line in the report
COUNTERS = (
    "sipguard_calls_total",
    "sipguard_presentation_total",
    "sipguard_emergency_calls_total",
    "sipguard_rejected_total",
    "sipguard_cdr_records_total",
)


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def say(msg: str) -> None:
    print(f"loadtest: {msg}", file=sys.stderr, flush=True)


def parse_mix(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        name, _, share = part.strip().partition(":")
        if name not in MIX:
            raise SystemExit(f"LOAD_MIX: unknown scenario {name!r} (known: {', '.join(MIX)})")
        out[name] = float(share or 0)
    return out


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def udp_bound(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def wait_for(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"loadtest: {what} not there after {timeout:.0f} s")
        time.sleep(0.5)


def sipp_command(
    name: str, scenario: str, *, data: Path, timeout_s: int, rtt_calls: int = 0
) -> list[str]:
    """The options every SIPp run here has: bounded, statistics and errors into ``data``;
    with ``rtt_calls``, the response times (``-trace_rtt``, into SIPp's working folder)."""
    cmd = [
        "timeout",
        "--kill-after=5",
        str(timeout_s + 10),
        "sipp",
        "-sf",
        str(SCENARIOS / scenario),
        "-t",
        "u1",
        "-timeout",
        f"{timeout_s}s",
        "-timeout_error",
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(data / f"{name}_stat.csv"),
        "-fd",
        "1",
        "-trace_err",
        "-error_file",
        str(data / f"{name}_errors.log"),
    ]
    if rtt_calls:
        # SIPp writes its response times in batches of -rtt_freq calls and drops a last
        # incomplete batch: a batch size that divides the number of calls
        freq = next(f for f in (1000, 100, 10, 1) if rtt_calls % f == 0)
        cmd += ["-trace_rtt", "-rtt_freq", str(freq)]
    return cmd


def last_stats(path: Path) -> dict[str, str]:
    """The header and the last row of a SIPp ``-trace_stat`` file, as a dict."""
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    head = lines[0].rstrip(";").split(";")
    last = lines[-1].rstrip(";").split(";")
    return dict(zip(head, last, strict=False))


def count(stats: dict[str, str], column: str) -> int:
    try:
        return int(stats.get(column, "0") or 0)
    except ValueError:
        return 0


def read_metrics(url: str) -> dict[str, float]:
    """Every sample of sipguard's ``/metrics`` by its full name (labels included)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[sample] = float(value)
    return out


def counters(samples: dict[str, float]) -> dict[str, float]:
    """sipguard's counters named in COUNTERS, the non-zero samples."""
    return {
        k: v for k, v in samples.items() if k.startswith(COUNTERS) and "_created" not in k and v
    }


class SipguardProcess:
    """sipguard's CPU seconds and RSS from its ``/metrics`` (``process_*``), for
    :class:`testkit.report.ProcSampler`: :meth:`cpu_seconds` scrapes, :meth:`status`
    gives the RSS of that scrape (the sampler asks in that order)."""

    def __init__(self, metrics_url: str) -> None:
        self.url = metrics_url
        self.rss_kb = 0
        self.peak_rss_kb = 0
        self.pause_max_s: float | None = None
        self.last: dict[str, float] = {}

    def cpu_seconds(self) -> float:
        samples = read_metrics(self.url)
        cpu = samples.get("process_cpu_seconds_total")
        rss = samples.get("process_resident_memory_bytes")
        if cpu is None or rss is None:
            raise ValueError("sipguard exports no process_cpu_seconds_total")
        self.rss_kb = int(rss) // 1024
        self.peak_rss_kb = max(self.peak_rss_kb, self.rss_kb)
        self.pause_max_s = samples.get("sipguard_event_loop_lag_max_seconds")
        self.last = samples
        return cpu

    def metrics(self) -> dict[str, float]:
        """The samples of the scrape :meth:`cpu_seconds` just made: the sampler's event-loop
        lag columns come from the same one."""
        return self.last

    def status(self) -> dict[str, int]:
        return {"VmRSS": self.rss_kb}


def callee() -> int:
    report = Path(env("LOAD_REPORT", "/report"))
    data = report / DATA
    (data / "callee").mkdir(parents=True, exist_ok=True)
    duration = int(float(env("LOAD_DURATION", "20")))
    hold_ms = int(env("LOAD_HOLD_MS", "1000"))
    # it lives until stopped: the caller's run, its BYEs and a margin
    timeout_s = duration + hold_ms // 1000 + 120
    cmd = sipp_command("callee", "uas-loadtest.xml", data=data, timeout_s=timeout_s)
    cmd += ["-i", env("CALLEE_ADDRESS", "127.0.0.2"), "-p", env("CALLEE_PORT", "5080")]
    say("callee: " + " ".join(cmd))
    proc = subprocess.Popen(
        cmd, cwd=data / "callee", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )

    def stop(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = proc.wait()
    stats = last_stats(data / "callee_stat.csv")
    say(
        f"callee: exit {code}, calls {count(stats, 'TotalCallCreated')}, "
        f"completed {count(stats, 'SuccessfulCall(C)')}, failed {count(stats, 'FailedCall(C)')}"
    )
    return 0


def caller() -> int:
    report = Path(env("LOAD_REPORT", "/report"))
    data = report / DATA
    data.mkdir(parents=True, exist_ok=True)
    rate = float(env("LOAD_RATE", "10"))
    duration = float(env("LOAD_DURATION", "20"))
    hold_ms = int(env("LOAD_HOLD_MS", "1000"))
    mix_text = env("LOAD_MIX", DEFAULT_MIX)
    mix = parse_mix(mix_text)
    sipguard = env("SIPGUARD_SIP", "127.0.0.1:5060")
    metrics = env("SIPGUARD_METRICS", "http://127.0.0.1:9460").rstrip("/")
    caller_ip = env("CALLER_ADDRESS", "127.0.0.3")
    callee_ip, callee_port = env("CALLEE_ADDRESS", "127.0.0.2"), int(env("CALLEE_PORT", "5080"))

    wait_for("sipguard's /readyz", lambda: http_status(f"{metrics}/readyz") == 200, 60)
    wait_for(
        f"the callee on {callee_ip}:{callee_port}", lambda: udp_bound(callee_ip, callee_port), 30
    )
    timeout_s = int(duration + hold_ms / 1000 + 60)
    planned: dict[str, int] = {}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    process = SipguardProcess(f"{metrics}/metrics")
    sampler = ProcSampler(process, data / SAMPLES, interval=SAMPLE_SECONDS)

    def stop(signum: int, _frame: object) -> None:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    cpu0 = cpu1 = None
    with contextlib.suppress(OSError, ValueError):
        cpu0 = process.cpu_seconds()
    with sampler:
        started = time.monotonic()
        for name, share in mix.items():
            scenario_rate = rate * share / 100
            calls = round(scenario_rate * duration)
            if calls <= 0:
                continue
            scenario, inject, dialled = MIX[name]
            cmd = sipp_command(name, scenario, data=data, timeout_s=timeout_s, rtt_calls=calls)
            cmd += [sipguard, "-i", caller_ip, "-p", str(free_udp_port(caller_ip))]
            cmd += ["-s", dialled, "-m", str(calls), "-r", f"{scenario_rate:g}", "-rp", "1000"]
            cmd += ["-d", str(hold_ms)]
            if inject is not None:
                cmd += ["-inf", str(SCENARIOS / inject)]
            say(f"{name}: {calls} calls at {scenario_rate:g}/s: " + " ".join(cmd))
            planned[name] = calls
            (data / name).mkdir(exist_ok=True)  # SIPp's working folder: its -trace_rtt file
            log = open(data / f"{name}_sipp.log", "wb")  # noqa: SIM115 - closed by the exit
            procs[name] = subprocess.Popen(
                cmd, cwd=data / name, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        exits = {name: proc.wait() for name, proc in procs.items()}
        elapsed = time.monotonic() - started
        with contextlib.suppress(OSError, ValueError):
            cpu1 = process.cpu_seconds()
    time.sleep(1.5)  # sipguard's CDR writer and counters, the callee's statistics catch up
    try:
        samples = read_metrics(f"{metrics}/metrics")
    except OSError as exc:
        say(f"metrics not read: {exc}")
        samples = {}

    rows: list[dict[str, Any]] = []
    for name, calls in planned.items():
        stats = last_stats(data / f"{name}_stat.csv")
        rows.append(
            {
                "scenario": name,
                "planned": calls,
                "offered": count(stats, "TotalCallCreated"),
                "completed": count(stats, "SuccessfulCall(C)"),
                "failed": count(stats, "FailedCall(C)"),
                "retransmissions": count(stats, "Retransmissions(C)"),
                "sipp_exit": exits[name],
                "failures": {
                    k: count(stats, k)
                    for k in stats
                    if k.startswith("Failed") and k.endswith("(C)") and count(stats, k)
                },
            }
        )
    ok = bool(rows) and all(
        r["sipp_exit"] == 0 and r["failed"] == 0 and r["completed"] == r["planned"] for r in rows
    )
    series = read_run(data, callers=list(planned), callee="callee", rtt_glob="*/*_rtt.csv")
    result = LoadResult(rate, duration, hold_ms, "udp", workdir=str(data))
    result.attempted = sum(r["offered"] for r in rows)
    result.succeeded = sum(r["completed"] for r in rows)
    result.failed = sum(max(r["failed"], r["offered"] - r["completed"]) for r in rows)
    result.retransmissions = sum(r["retransmissions"] for r in rows) + count(
        last_stats(data / "callee_stat.csv"), "Retransmissions(C)"
    )
    result.placing_s = max(elapsed - hold_ms / 1000, 1e-3)
    result.achieved_cps = result.succeeded / result.placing_s
    result.setup_p50_ms = percentile(series.setup_ms, 50)
    result.setup_p99_ms = percentile(series.setup_ms, 99)
    result.setup_max_ms = max(series.setup_ms) if series.setup_ms else None
    if cpu0 is not None and cpu1 is not None:
        result.cpu_s = cpu1 - cpu0
        if result.succeeded:
            result.cpu_s_per_1k = result.cpu_s / result.succeeded * 1000
    result.peak_rss_kb = process.peak_rss_kb
    pause = samples.get("sipguard_event_loop_lag_max_seconds", process.pause_max_s)
    result.loop_pause_max_ms = None if pause is None else pause * 1000
    result.writes_cdrs = False  # its CDR files are the sipguard container's, not here
    result.uac_exit = max(exits.values(), default=None)
    for r in rows:
        for k, v in r["failures"].items():
            result.failures[k] = result.failures.get(k, 0) + v
    ports = {int(sipguard.rpartition(":")[2]), callee_port}
    result.udp_drops = {
        k: v for k, v in udp_drops().items() if int(k.rsplit(":", 1)[1]) in ports and v
    }
    summary = {
        "ok": ok,
        "mix": mix_text,
        "elapsed_s": round(elapsed, 1),
        "result": asdict(result),
        "scenarios": rows,
        "sipguard": counters(samples),
        "process_samples": len(sampler.rows),
    }
    (report / "results.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    try:
        write_report(
            report,
            [asdict(result)],
            "\n".join([header(), row(result)]),
            command=(
                "docker-compose --profile loadtest up --exit-code-from sipp-caller with "
                f"LOAD_RATE={rate:g} LOAD_DURATION={duration:g} LOAD_HOLD_MS={hold_ms} "
                f"LOAD_MIX={mix_text}"
            ),
            build=f"the container image {env('SIPGUARD_IMAGE', 'sipguard')}",
            setting=setting(sipguard, caller_ip, callee_ip, callee_port),
            series=[series],
            extra=markdown(summary),
        )
    except (ImportError, OSError, ValueError) as exc:  # the verdict stands; say why
        say(f"the report was not written: {exc!r}")
        return 1
    say(
        f"{'ok' if ok else 'FAILED'}: {result.attempted} calls offered, "
        f"{result.succeeded} completed, {result.failed} failed; report in {report}/README.md"
    )
    return 0 if ok else 1


def setting(sipguard: str, caller_ip: str, callee_ip: str, callee_port: int) -> str:
    return (
        f"- in containers on the host's network (`docker/compose.yaml`, profile `loadtest`): "
        f"SIPp clients on {caller_ip}, one per scenario of the mix at once, → sipguard "
        f"{sipguard} → the SIPp callee {callee_ip}:{callee_port}, nothing pinned. Setup "
        "times are SIPp's (`-trace_rtt`) and include the callee's 500 ms of ringing "
        "(cancelled calls have none). sipguard's CPU and RSS are its own "
        "`process_cpu_seconds_total` and `process_resident_memory_bytes`, read from its "
        f"`/metrics` every {SAMPLE_SECONDS:g} s; peak RSS is the highest sample. The "
        "figures as the runner printed them:"
    )


def markdown(summary: dict[str, Any]) -> str:
    """The table per scenario and sipguard's counters, for the end of the report."""
    lines = [
        "## Per scenario",
        "",
        f"Mix `{summary['mix']}`; the SIPp clients ran {summary['elapsed_s']} s. Result: "
        f"**{'every call completed' if summary['ok'] else 'FAILED'}**.",
        "",
        "| scenario | planned | offered | completed | failed | retransmissions | SIPp exit |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["scenarios"]:
        lines.append(
            f"| {r['scenario']} | {r['planned']} | {r['offered']} | {r['completed']} "
            f"| {r['failed']} | {r['retransmissions']} | {r['sipp_exit']} |"
        )
    total = {
        key: sum(int(r[key]) for r in summary["scenarios"])
        for key in ("planned", "offered", "completed", "failed", "retransmissions")
    }
    lines.append(
        f"| **all** | {total['planned']} | {total['offered']} | {total['completed']} "
        f"| {total['failed']} | {total['retransmissions']} | |"
    )
    lines += ["", "sipguard's counters at the end (non-zero samples):", "", "```"]
    lines += [f"{k} {v:g}" for k, v in sorted(summary["sipguard"].items())] or ["(none read)"]
    lines += [
        "```",
        "",
        "SIPp's files are in `sipp/`: statistics per scenario, one row a second "
        "(`<scenario>_stat.csv`, `callee_stat.csv`), response times "
        "(`<scenario>/*_rtt.csv`), errors (`*_errors.log`), and sipguard's CPU and RSS "
        f"samples (`{SAMPLES}`). The callee's `callee_errors.log` has one receive timeout "
        "per answered call: that is its branch to answer, not an error.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "callee":
        return callee()
    if role == "caller":
        return caller()
    print("usage: loadtest.py callee|caller (settings from the environment)", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main())
