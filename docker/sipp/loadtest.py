#!/usr/bin/env python3
"""The SIPp image's load test: ``loadtest.py callee`` or ``loadtest.py caller``.

The layout is that of the test suite's SIPp harness (``tests/sipp_harness.py``), on the
host's network: the caller on 127.0.0.3 (trunk ``customers``), sipguard on 127.0.0.1, the
callee on 127.0.0.2 (trunk ``pbx``), as ``config/sipguard.yaml`` has them.

``callee`` runs one SIPp server (``scenarios/uas-loadtest.xml``) until it is stopped.

``caller`` waits until sipguard's ``/readyz`` answers and the callee listens, then runs one
SIPp client per scenario of the mix at the same time, each at its share of the rate, for
the duration, and writes the report into ``$LOAD_REPORT``: SIPp's statistics
(``<scenario>_stat.csv``, ``<scenario>_errors.log``), ``summary.md`` (calls offered,
completed and failed per scenario, retransmissions, sipguard's own counters) and
``summary.json``. Its exit status is 0 when every call of every scenario was placed and
completed, 1 otherwise.

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
``CALLEE_PORT`` [5080]. Every SIPp run is bounded by ``-m``, ``-timeout`` and a
``timeout`` wrapper.
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
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCENARIOS = Path(os.environ.get("LOAD_SCENARIOS") or HERE / "scenarios")

# name: (scenario file, injection file or None, dialled string for -s)
MIX: dict[str, tuple[str, str | None, str]] = {
    "plain": ("uac-call.xml", "plain.csv", "0201234567"),
    "privacy": ("uac-call.xml", "privacy.csv", "0201234567"),
    "emergency": ("uac-call.xml", "emergency.csv", "112"),
    "cancel": ("uac-cancel.xml", None, "0201234568"),
}
DEFAULT_MIX = "plain:50,privacy:20,emergency:10,cancel:20"

# sipguard's counters worth a line in the summary
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


def sipp_command(name: str, scenario: str, *, report: Path, timeout_s: int) -> list[str]:
    """The options every SIPp run here has: bounded, statistics and errors to the report."""
    return [
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
        str(report / f"{name}_stat.csv"),
        "-fd",
        "1",
        "-trace_err",
        "-error_file",
        str(report / f"{name}_errors.log"),
    ]


def last_stats(path: Path) -> dict[str, str]:
    """The header and the last row of a SIPp ``-trace_stat`` file, as a dict (as
    ``tests/sipp_harness.py`` reads it; the image has no tests/ to import it from)."""
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


def sipp_ms(text: str) -> float | None:
    """SIPp's ``HH:MM:SS:micro`` (its mean response time) in milliseconds; None if none."""
    try:
        hours, minutes, seconds, micro = (int(x) for x in text.split(":"))
    except ValueError:
        return None
    return round((hours * 3600 + minutes * 60 + seconds) * 1000 + micro / 1000, 1)


def scrape(url: str) -> dict[str, float]:
    """sipguard's counters named in COUNTERS, by their full sample name."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError as exc:
        say(f"metrics not read: {exc}")
        return out
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(COUNTERS) or "_created" in line:
            continue
        sample, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            if float(value):
                out[sample] = float(value)
    return out


def callee() -> int:
    report = Path(env("LOAD_REPORT", "/report"))
    report.mkdir(parents=True, exist_ok=True)
    duration = int(float(env("LOAD_DURATION", "20")))
    hold_ms = int(env("LOAD_HOLD_MS", "1000"))
    # it lives until stopped: the caller's run, its BYEs and a margin
    timeout_s = duration + hold_ms // 1000 + 120
    cmd = sipp_command("callee", "uas-loadtest.xml", report=report, timeout_s=timeout_s)
    cmd += ["-i", env("CALLEE_ADDRESS", "127.0.0.2"), "-p", env("CALLEE_PORT", "5080")]
    say("callee: " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def stop(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = proc.wait()
    stats = last_stats(report / "callee_stat.csv")
    say(
        f"callee: exit {code}, calls {count(stats, 'TotalCallCreated')}, "
        f"completed {count(stats, 'SuccessfulCall(C)')}, failed {count(stats, 'FailedCall(C)')}"
    )
    return 0


def caller() -> int:
    report = Path(env("LOAD_REPORT", "/report"))
    report.mkdir(parents=True, exist_ok=True)
    rate = float(env("LOAD_RATE", "10"))
    duration = float(env("LOAD_DURATION", "20"))
    hold_ms = int(env("LOAD_HOLD_MS", "1000"))
    mix = parse_mix(env("LOAD_MIX", DEFAULT_MIX))
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
    started = time.monotonic()
    for name, share in mix.items():
        scenario_rate = rate * share / 100
        calls = round(scenario_rate * duration)
        if calls <= 0:
            continue
        scenario, inject, dialled = MIX[name]
        cmd = sipp_command(name, scenario, report=report, timeout_s=timeout_s)
        cmd += [sipguard, "-i", caller_ip, "-p", str(free_udp_port(caller_ip))]
        cmd += ["-s", dialled, "-m", str(calls), "-r", f"{scenario_rate:g}", "-rp", "1000"]
        cmd += ["-d", str(hold_ms)]
        if inject is not None:
            cmd += ["-inf", str(SCENARIOS / inject)]
        say(f"{name}: {calls} calls at {scenario_rate:g}/s: " + " ".join(cmd))
        planned[name] = calls
        log = open(report / f"{name}_sipp.log", "wb")  # noqa: SIM115 - closed by the exit
        procs[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def stop(signum: int, _frame: object) -> None:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    exits = {name: proc.wait() for name, proc in procs.items()}
    elapsed = time.monotonic() - started
    time.sleep(1.5)  # sipguard's CDR writer and counters catch up with the last calls
    counters = scrape(f"{metrics}/metrics")

    rows: list[dict[str, Any]] = []
    for name, calls in planned.items():
        stats = last_stats(report / f"{name}_stat.csv")
        rows.append(
            {
                "scenario": name,
                "planned": calls,
                "offered": count(stats, "TotalCallCreated"),
                "completed": count(stats, "SuccessfulCall(C)"),
                "failed": count(stats, "FailedCall(C)"),
                "retransmissions": count(stats, "Retransmissions(C)"),
                "setup_ms_mean": sipp_ms(stats.get("ResponseTime1(C)", "")),
                "sipp_exit": exits[name],
            }
        )
    total = {
        key: sum(int(r[key]) for r in rows)
        for key in ("planned", "offered", "completed", "failed", "retransmissions")
    }
    ok = bool(rows) and all(
        r["sipp_exit"] == 0 and r["failed"] == 0 and r["completed"] == r["planned"] for r in rows
    )
    summary = {
        "ok": ok,
        "rate": rate,
        "duration_s": duration,
        "hold_ms": hold_ms,
        "elapsed_s": round(elapsed, 1),
        "scenarios": rows,
        "total": total,
        "sipguard": counters,
    }
    (report / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    (report / "summary.md").write_text(markdown(summary), "utf-8")
    say(
        f"{'ok' if ok else 'FAILED'}: {total['offered']} calls offered, "
        f"{total['completed']} completed, {total['failed']} failed; report in {report}"
    )
    return 0 if ok else 1


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# sipguard load test",
        "",
        f"{summary['rate']:g} calls/s for {summary['duration_s']:g} s, answered calls held "
        f"{summary['hold_ms']} ms; the SIPp clients ran {summary['elapsed_s']} s. "
        f"Result: **{'every call completed' if summary['ok'] else 'FAILED'}**.",
        "",
        "| scenario | planned | offered | completed | failed | retransmissions "
        "| mean INVITE→200 (ms) | SIPp exit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["scenarios"]:
        lines.append(
            f"| {r['scenario']} | {r['planned']} | {r['offered']} | {r['completed']} "
            f"| {r['failed']} | {r['retransmissions']} | {r['setup_ms_mean'] or ''} "
            f"| {r['sipp_exit']} |"
        )
    t = summary["total"]
    lines.append(
        f"| **all** | {t['planned']} | {t['offered']} | {t['completed']} | {t['failed']} "
        f"| {t['retransmissions']} | | |"
    )
    lines += ["", "sipguard's counters at the end (non-zero samples):", "", "```"]
    lines += [f"{k} {v:g}" for k, v in sorted(summary["sipguard"].items())] or ["(none read)"]
    lines += [
        "```",
        "",
        "The setup time includes the callee's 500 ms of ringing (a cancelled call has "
        "none). SIPp's own statistics per scenario: `<scenario>_stat.csv` (`-trace_stat`, "
        "one row a second); its errors: `<scenario>_errors.log`.",
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
