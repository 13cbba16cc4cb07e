"""testkit/report.py: a load report (Markdown and PNG plots) from a run's files, fed
small synthetic SIPp statistics, response times and process samples."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from testkit.report import (
    LAG_BOUNDS,
    LAG_COLUMNS,
    SAMPLES,
    SPEED,
    ProcSampler,
    plot_run,
    read_run,
    write_report,
)

pytest.importorskip("matplotlib")  # the plots (the test extra installs it)

T0 = 1796341868.0
COLUMNS = "StartTime;CurrentTime;OutgoingCall(P);SuccessfulCall(P);FailedCall(P);Retransmissions(P)"


def stat_file(path: Path, rows: list[tuple[int, int, int, int]]) -> None:
    """A SIPp -trace_stat file: one row a second; CurrentTime is date, time, epoch."""
    lines = [COLUMNS + ";"]
    for i, (out, ok, failed, retrans) in enumerate(rows):
        when = f"2026-12-03\t23:51:{i:02d}.000000\t{T0 + i:.6f}"
        lines.append(f"x;{when};{out};{ok};{failed};{retrans};")
    path.write_text("\n".join(lines) + "\n")


def synthetic_run(workdir: Path) -> dict[str, Any]:
    workdir.mkdir()
    stat_file(
        workdir / "uac_stat.csv",
        [(0, 0, 0, 0), (100, 0, 0, 0), (100, 98, 2, 3), (100, 100, 0, 0), (0, 100, 0, 1)],
    )
    stat_file(workdir / "uas_stat.csv", [(0, 0, 0, 0)] * 2 + [(0, 0, 0, 5)] + [(0, 0, 0, 0)] * 2)
    rtts = [f"{1000 + 10 * i};{4 if i % 10 else 12};1" for i in range(300)]
    (workdir / "uac_1234_rtt.csv").write_text("Date_ms;response_time_ms;rtd_no\n" + "\n".join(rtts))
    samples = [f"{T0 + i / 2:.3f};{0.05 * i:.3f};{40000 + 100 * i}" for i in range(10)]
    (workdir / SAMPLES).write_text("t;cpu_s;rss_kb\n" + "\n".join(samples) + "\n")
    return {
        "rate": 100.0,
        "duration_s": 3.0,
        "hold_ms": 1000,
        "attempted": 300,
        "succeeded": 298,
        "failed": 2,
        "achieved_cps": 99.3,
        "retransmissions": 9,
        "setup_p50_ms": 4.0,
        "setup_p99_ms": 12.0,
        "cpu_s": 0.45,
        "cpu_s_per_1k": 1.51,
        "peak_rss_kb": 40960,
        "loop_pause_max_ms": 3.2,
        "element": "sipguard",
        "failures": {"FailedCallRejected(C)": 2},
        "workdir": str(workdir),
    }


def test_a_runs_series_come_from_sipps_statistics_and_the_samples(tmp_path: Path) -> None:
    synthetic_run(tmp_path / "run")
    s = read_run(tmp_path / "run")
    assert s.t == [1.0, 2.0, 3.0, 4.0]
    assert s.offered == [100.0, 100.0, 100.0, 0.0]
    assert s.completed == [0.0, 98.0, 100.0, 100.0]
    assert s.failed == [0, 2, 0, 0]
    assert s.retrans == [0, 8, 0, 1]  # uac + uas
    assert len(s.setup_ms) == 300 and s.setup_t[0] == 1.0
    assert s.cpu_pct == pytest.approx([10.0] * 9)  # 0.05 s of CPU every 0.5 s
    assert s.rss_mb[-1] == pytest.approx((40000 + 900) / 1024)


def test_the_report_has_the_runners_figures_and_its_plots(tmp_path: Path) -> None:
    result = synthetic_run(tmp_path / "run")
    table = "rate/s  attempted\n   100        300"
    out = tmp_path / "report"
    md = write_report(out, [result], table, command="python loadtests/run.py --rate 100")
    text = md.read_text()
    assert md == out / "README.md"
    assert "python loadtests/run.py --rate 100" in text
    assert table in text  # the runner's own lines, as printed
    for figure in (
        "| calls attempted | 300 |",
        "| calls succeeded | 298 |",
        "| calls failed | 2 |",
        "| calls/s achieved | 99 |",
        "| SIPp retransmissions (both sides) | 9 |",
        "| setup p50, ms (INVITE→200) | 4 |",
        "| setup p99, ms | 12 |",
        "| CPU seconds | 0.45 |",
        "| peak RSS, MB | 40.0 |",
        "FailedCallRejected(C)",
    ):
        assert figure in text, figure
    for name in ("calls.png", "failures.png", "setup.png", "process.png"):
        assert f"]({name})" in text
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_several_runs_get_plots_of_their_own(tmp_path: Path) -> None:
    runs = [synthetic_run(tmp_path / "a"), synthetic_run(tmp_path / "b")]
    runs[1]["rate"] = 200.0
    write_report(tmp_path / "out", runs, "table")
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert len(names) == 8 and names[0].startswith("1-") and names[-1].startswith("2-")
    assert "## sipguard at 200 calls/s" in (tmp_path / "out" / "README.md").read_text()


class FakeElement:
    def __init__(self) -> None:
        self.cpu = 0.0

    def cpu_seconds(self) -> float:
        self.cpu += 0.01
        return self.cpu

    def status(self) -> dict[str, int]:
        return {"VmRSS": 1234}


def test_the_sampler_writes_cpu_and_rss_while_it_runs(tmp_path: Path) -> None:
    path = tmp_path / SAMPLES
    with ProcSampler(FakeElement(), path, interval=0.01):
        time.sleep(0.1)
    lines = path.read_text().splitlines()
    assert lines[0] == "t;cpu_s;rss_kb"
    assert len(lines) >= 4
    assert all(x.endswith(";1234") for x in lines[1:])


def test_the_sampler_measures_the_machine_on_the_elements_core(tmp_path: Path) -> None:
    path = tmp_path / SAMPLES
    with ProcSampler(FakeElement(), path, interval=0.01, speed_core=0):
        time.sleep(0.1)
    lines = path.read_text().splitlines()
    assert lines[0] == f"t;cpu_s;rss_kb;{SPEED}"
    speeds = [float(line.split(";")[3]) for line in lines[1:]]
    assert len(speeds) >= 4 and all(0 < v < 1000 for v in speeds)  # CPU ms of fixed work
    # no such core: no probe, and the sampler samples as before
    with ProcSampler(FakeElement(), path, interval=0.01, speed_core=4096):
        time.sleep(0.05)
    assert path.read_text().splitlines()[0] == "t;cpu_s;rss_kb"


def test_a_slow_period_of_the_machine_is_in_the_series_the_plot_and_the_report(
    tmp_path: Path,
) -> None:
    result = synthetic_run(tmp_path / "run")
    samples = [
        f"{T0 + i / 2:.3f};{0.05 * i:.3f};{40000 + 100 * i};{0.9 if i == 6 else 0.5}"
        for i in range(10)
    ]
    (tmp_path / "run" / SAMPLES).write_text(f"t;cpu_s;rss_kb;{SPEED}\n" + "\n".join(samples))
    run = read_run(tmp_path / "run")
    assert run.speed_ms == [0.5] * 5 + [0.9] + [0.5] * 3
    assert run.speed_t == run.proc_t
    text = write_report(tmp_path / "report", [result], "table").read_text()
    assert "median 0.50 ms, slowest 0.90 ms (1.80 times)" in text
    assert "periods 25% or more over the median: 1 of 9" in text
    assert (tmp_path / "report" / "process.png").read_bytes()[:4] == b"\x89PNG"


LAG = "sipguard_event_loop_lag_seconds"


def lag_metrics(lags_s: list[float], max_s: float) -> dict[str, float]:
    """What sipguard's /metrics shows (as testkit.sipp.scrape_metrics keys it) once its
    probe has seen ``lags_s``: cumulative buckets, count, sum, and the max gauge."""
    out = {f'{LAG}_bucket{{le="{b}"}}': float(sum(x <= b for x in lags_s)) for b in LAG_BOUNDS}
    out[f'{LAG}_bucket{{le="+Inf"}}'] = float(len(lags_s))
    out[f"{LAG}_count"] = float(len(lags_s))
    out[f"{LAG}_sum"] = sum(lags_s)
    out["sipguard_event_loop_lag_max_seconds"] = max_s
    out["sipguard_calls_total"] = 3.0
    return out


# the probe's lags between scrapes: quiet, one 7 ms pause, a 15 ms and a 30 ms one, none
# (the loop stuck over the whole period), quiet again
PERIODS = [[0.0002] * 3, [0.0003] * 9, [0.0004] * 8 + [0.007], [0.015, 0.030] + [0.0001] * 8, []]


class LaggyElement(FakeElement):
    """sipguard as ProcSampler sees it: /proc figures and a metrics() scrape, whose probe
    counts grow by PERIODS[i] at the i-th scrape; the third scrape fails."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float] = []
        self.scrapes = 0

    def metrics(self) -> dict[str, float]:
        self.scrapes += 1
        self.seen += PERIODS[min(self.scrapes - 1, len(PERIODS) - 1)]  # the probe goes on
        if self.scrapes == 3:
            raise ConnectionRefusedError("metrics endpoint busy")
        return lag_metrics(self.seen, max([0.012, *self.seen]))


def test_the_sampler_adds_the_lag_probes_buckets_where_the_element_has_metrics(
    tmp_path: Path,
) -> None:
    element = LaggyElement()
    with ProcSampler(element, tmp_path / SAMPLES, interval=3600) as sampler:
        deadline = time.monotonic() + 5
        while not sampler.rows and time.monotonic() < deadline:  # its first sample
            time.sleep(0.01)
        for _ in range(5):
            sampler._sample()  # the next ones, as its thread would every interval
    # and one last sample on the way out
    lines = (tmp_path / SAMPLES).read_text().splitlines()
    assert lines[0] == "t;cpu_s;rss_kb;" + ";".join(LAG_COLUMNS)
    assert lines[0].startswith("t;cpu_s;rss_kb;lag_n;lag_le_0.001;")  # the old 3 first
    assert LAG_COLUMNS[-1] == "lag_max_s" and "lag_le_0.01" in LAG_COLUMNS
    rows = [line.split(";") for line in lines[1:]]
    assert len(rows) == 7 and all(len(r) == 3 + len(LAG_COLUMNS) for r in rows)
    assert rows[2][3:] == [""] * len(LAG_COLUMNS)  # the failed scrape: cells left empty
    first = dict(zip(lines[0].split(";"), rows[0], strict=True))
    assert first["rss_kb"] == "1234" and float(first["lag_n"]) == 3
    after = dict(zip(lines[0].split(";"), rows[3], strict=True))
    assert float(after["lag_n"]) == 31  # 3 + 9 + 9 + 10 probes
    assert float(after["lag_n"]) - float(after["lag_le_0.01"]) == 2  # 15 and 30 ms
    assert float(after["lag_n"]) - float(after["lag_le_0.005"]) == 3  # and 7 ms
    assert float(after["lag_max_s"]) == 0.030


def test_a_runs_lag_series_per_sample_period(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    synthetic_run(workdir)
    head = "t;cpu_s;rss_kb;" + ";".join(LAG_COLUMNS)
    rows, seen = [], []
    for i, period in enumerate(PERIODS):
        seen += period
        m = lag_metrics(seen, max([0.012, *seen]))
        cells = [m[f"{LAG}_count"], *(m[f'{LAG}_bucket{{le="{b}"}}'] for b in LAG_BOUNDS)]
        rows.append(f"{T0 + i / 2:.3f};{0.05 * i:.3f};40000;" + ";".join(map(str, cells)))
        rows[-1] += f";{m['sipguard_event_loop_lag_max_seconds']}"
    rows.insert(2, f"{T0 + 0.75:.3f};0.075;40000" + ";" * len(LAG_COLUMNS))  # a failed scrape
    (workdir / SAMPLES).write_text(head + "\n" + "\n".join(rows) + "\n")
    s = read_run(workdir)
    assert len(s.proc_t) == 5 and s.cpu_pct[0] == pytest.approx(10.0)
    # the periods with both ends scraped: 1 (9 quiet probes), 3 (10, two of them late), 4
    assert s.lag_from == [0.0, 1.0, 1.5]
    assert s.lag_t == [0.5, 1.5, 2.0]
    assert s.lag_probes == [9, 10, 0]
    assert s.lag_late_5ms == [0, 2, 0]
    assert s.lag_late_10ms == [0, 2, 0]
    assert s.lag_bound_ms[:2] == [1.0, 50.0]  # every probe ≤ 1 ms; the 30 ms one ≤ 50 ms
    assert math.isnan(s.lag_bound_ms[2])  # no probe woke: nothing to bound
    assert s.lag_max_ms == pytest.approx([12.0, 30.0, 30.0])


def test_a_run_without_lag_columns_has_no_lag_series(tmp_path: Path) -> None:
    synthetic_run(tmp_path / "run")
    s = read_run(tmp_path / "run")
    assert s.proc_t and not s.lag_t and not s.lag_late_10ms and not s.lag_bound_ms


def test_the_latency_figure_renders_with_and_without_lag_data(tmp_path: Path) -> None:
    result = synthetic_run(tmp_path / "run")
    s = read_run(tmp_path / "run")
    assert plot_run(s, result, tmp_path, "none-")[2] == (
        "Setup time p50 and p99, and event-loop pauses",
        "none-setup.png",
    )
    s.lag_from = [0.0, 0.5, 1.5, 2.0]  # the third period's start not scraped
    s.lag_t = [0.5, 1.0, 2.0, 2.5]
    s.lag_probes = [10, 10, 9, 0]
    s.lag_late_5ms = [0, 1, 3, 0]
    s.lag_late_10ms = [0, 0, 2, 0]
    s.lag_bound_ms = [1.0, 10.0, 1200.0, math.nan]  # 1.2 s: beyond the buckets, the gauge
    s.lag_max_ms = [4.0, 8.0, 1200.0, 1200.0]
    made = plot_run(s, result, tmp_path, "lag-")
    assert [name for _, name in made] == [
        "lag-calls.png",
        "lag-failures.png",
        "lag-setup.png",
        "lag-process.png",
    ]
    for name in ("none-setup.png", "lag-setup.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = write_report(tmp_path / "out", [result], "table", series=[s]).read_text()
    assert "probes late > 10 ms: 2 of 29, > 5 ms: 4" in md
    assert "the longest pause at most 1200 ms" in md
    plain = write_report(tmp_path / "plain", [result], "table").read_text()
    assert "probes late" not in plain


def test_several_callers_add_up_second_by_second(tmp_path: Path) -> None:
    """The container harness runs one SIPp client per scenario at once: their periods add
    up by the second they end in, and their setup times come from every scenario."""
    run = tmp_path / "run"
    run.mkdir()
    stat_file(run / "plain_stat.csv", [(0, 0, 0, 0), (5, 4, 0, 1), (5, 5, 1, 0)])
    stat_file(run / "cancel_stat.csv", [(0, 0, 0, 0), (2, 2, 0, 0), (2, 1, 0, 2)])
    stat_file(run / "callee_stat.csv", [(0, 0, 0, 0), (0, 0, 0, 3), (0, 0, 0, 0)])
    for name in ("plain", "cancel"):
        (run / name).mkdir()
        (run / name / f"uac-call_{len(name)}_rtt.csv").write_text(
            "Date_ms;response_time_ms;rtd_no\n1500;510;1\n2500;520;1\n"
        )
    (run / "stray_rtt.csv").write_text("Date_ms;response_time_ms;rtd_no\n1;9999;1\n")
    s = read_run(run, callers=("plain", "cancel"), callee="callee", rtt_glob="*/*_rtt.csv")
    assert s.t == [1.0, 2.0]
    assert s.offered == [7.0, 7.0]
    assert s.completed == [6.0, 6.0]
    assert s.failed == [0, 1]
    assert s.retrans == [4, 2]  # callers + callee
    assert sorted(s.setup_ms) == [510.0, 510.0, 520.0, 520.0]  # not the stray file


def test_a_report_from_given_series_with_its_own_setting_and_notes(tmp_path: Path) -> None:
    result = synthetic_run(tmp_path / "run")
    series = read_run(tmp_path / "run")
    result["workdir"] = str(tmp_path / "gone")  # the given series is used, not the folder
    md = write_report(
        tmp_path / "out",
        [result],
        "table",
        setting="- in containers",
        series=[series],
        extra="## per scenario\n\n| a | b |",
    ).read_text()
    assert "- in containers" in md and "pinned to core 1" not in md
    assert md.rstrip().endswith("## per scenario\n\n| a | b |")
    assert (tmp_path / "out" / "calls.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="one series per result"):
        write_report(tmp_path / "out", [result], "table", series=[])


def test_the_sipp_image_s_testkit_files_are_all_the_load_harness_imports(tmp_path: Path) -> None:
    """docker/sipp/Dockerfile copies a few testkit modules: the harness must import with
    those alone (a module-level import of another one broke the image once)."""
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    text = (root / "docker" / "sipp" / "Dockerfile").read_text()
    copy = re.search(r"COPY ((?:testkit/\S+\s+(?:\\\s*)?)+)/opt/sipguard-load/testkit/", text)
    assert copy is not None
    files = re.findall(r"testkit/\S+\.py", copy.group(1))
    (tmp_path / "testkit").mkdir()
    for f in files:
        (tmp_path / f).write_bytes((root / f).read_bytes())
    run = subprocess.run(
        [sys.executable, "-c", "import testkit.load, testkit.report"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
