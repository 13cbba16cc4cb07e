"""The container image and the SIPp harness of ``docker/``, built and run for real.

Issue 18 ("What it must show"): a Debian bookworm base made with debootstrap from the
mirror this host's apt uses; the sipguard image (``docker/Dockerfile``, built with the
wheels ``docker/wheels.sh`` downloads, so nothing inside the build reaches an index) and
the SIPp image (``docker/sipp/``) built on it; the compose ``loadtest`` profile run for
20 s at 10 calls/s with every call completing; the image's health check turning
``healthy``; ``docker stop`` draining the calls in progress.

Docker comes from :mod:`tests.dockerkit`: the daemon the environment names, or one started
here as root (and stopped here). Every container uses the host's network on loopback, as
the other SIPp tests do (caller 127.0.0.3, sipguard 127.0.0.1, callee 127.0.0.2), on ports
picked free for this run. The module is skipped only where no Docker daemon can run at
all, and the skip message says so: then the image is untested.

Building from a fresh machine takes about two minutes (debootstrap ~25 s, the mypyc build
in the image ~60 s); a base younger than a week and the build stage's layers are kept by
the private daemon between runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit import dockerd as dockerkit
from testkit.report import LAG_COLUMNS
from testkit.sipp import (
    CALLEE_IP,
    base_config,
    free_port,
    metric_sum,
    read_cdrs,
    scrape_metrics,
)

pytestmark = [pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
SIPGUARD_IMAGE = "sipguard:test"
BUILD_IMAGE = "sipguard-build:test"  # the build stage, tagged so its layers stay cached
SIPP_IMAGE = "sipguard-sipp:test"
SIPGUARD_UID = 10001  # docker/Dockerfile: ARG SIPGUARD_UID
RUN_ID = f"sgt{os.getpid()}"

LOAD_RATE = 10  # calls per second, all scenarios together
LOAD_DURATION = 20  # seconds
# docker/sipp/loadtest.py's default mix: plain 50%, privacy 20%, emergency 10%, cancel 20%
PLANNED = {"plain": 100, "privacy": 40, "emergency": 20, "cancel": 40}


def _load_sipp_runner() -> Any:
    """docker/sipp/loadtest.py, the SIPp image's runner (its HTTP helper is used here)."""
    path = REPO / "docker" / "sipp" / "loadtest.py"
    spec = importlib.util.spec_from_file_location("docker_sipp_loadtest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


loadtest = _load_sipp_runner()


@dataclass
class Kit:
    docker: dockerkit.Docker
    workdir: Path
    timings: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    """A Docker daemon with the base, the sipguard image and the SIPp image built."""
    workdir = tmp_path_factory.mktemp("docker")
    with contextlib.ExitStack() as stack:
        try:
            docker = stack.enter_context(dockerkit.daemon(workdir))
        except dockerkit.DockerUnavailableError as exc:
            pytest.skip(f"no Docker daemon can run here, so the container image is untested: {exc}")
        kit = Kit(docker, workdir)
        start = time.monotonic()
        base = dockerkit.ensure_base(docker, kit.timings)
        subprocess.run(
            ["sh", str(REPO / "docker" / "wheels.sh"), sys.executable],
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=300,
        )
        dockerfile = REPO / "docker" / "Dockerfile"
        took = dockerkit.build(
            docker, BUILD_IMAGE, REPO, base=base, dockerfile=dockerfile, target="build",
            workdir=workdir,
        )  # fmt: skip
        took += dockerkit.build(
            docker, SIPGUARD_IMAGE, REPO, base=base, dockerfile=dockerfile, workdir=workdir
        )
        kit.timings.append(f"sipguard image: built in {took:.0f} s")
        took = dockerkit.build(
            docker, SIPP_IMAGE, REPO, base=base, dockerfile=REPO / "docker" / "sipp" / "Dockerfile",
            workdir=workdir,
        )  # fmt: skip
        kit.timings.append(f"SIPp image: built in {took:.0f} s")
        kit.timings.append(f"set-up: {time.monotonic() - start:.0f} s")
        yield kit
        if docker.own:  # superseded builds of earlier runs; tagged images and layers stay
            docker.run("image", "prune", "--force", check=False, timeout=120)
        print("\n".join(["", *kit.timings]))


def write_setup(root: Path, *, drain_seconds: int) -> dict[str, Any]:
    """A sipguard configuration on free ports (the harness's production-like one), with
    its CDRs in the container's working directory, and the folders to mount."""
    sip_port, metrics_port = free_port(), free_port()
    callee_port = free_port(CALLEE_IP)
    config = base_config(
        sip_port=sip_port,
        metrics_port=metrics_port,
        callee_port=callee_port,
        cdr_dir=Path("/var/lib/sipguard/cdr"),
    )
    config["drain_seconds"] = drain_seconds
    for name in ("config", "var", "report"):
        (root / name).mkdir(parents=True)
    (root / "config" / "sipguard.yaml").write_text(yaml.safe_dump(config))
    if os.geteuid() == 0:  # the image's user writes there
        os.chown(root / "var", SIPGUARD_UID, SIPGUARD_UID)
    else:
        (root / "var").chmod(0o777)
    return {
        "config_dir": root / "config",
        "var": root / "var",
        "report": root / "report",
        "cdr": root / "var" / "cdr",
        "sip": f"127.0.0.1:{sip_port}",
        "metrics": f"http://127.0.0.1:{metrics_port}",
        "callee_port": callee_port,
    }


def load_env(s: dict[str, Any], **load: object) -> dict[str, str]:
    env = {
        "SIPGUARD_SIP": s["sip"],
        "SIPGUARD_METRICS": s["metrics"],
        "CALLEE_PORT": str(s["callee_port"]),
    }
    env.update({k: str(v) for k, v in load.items()})
    return env


def wait_until(what: str, check: Any, timeout: float, step: float = 0.25) -> float:
    """Poll ``check`` until true; the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not after {timeout:.0f} s")
        time.sleep(step)
    return time.monotonic() - start


# -- the image ------------------------------------------------------------------------------


def test_image_runs_unprivileged_with_no_compiler(kit: Kit) -> None:
    info = kit.docker.inspect("image", SIPGUARD_IMAGE)
    assert info is not None
    config = info["Config"]
    assert config["User"] == "sipguard"
    assert "sipguard-healthcheck" in " ".join(config["Healthcheck"]["Test"])
    assert config["StopSignal"] == "SIGTERM"
    probe = kit.docker.run(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", SIPGUARD_IMAGE, "-c",
        "id -u; for c in gcc cc c99 x86_64-linux-gnu-gcc-12 mypyc; do command -v $c; done;"
        " sipguard check-config -c /etc/sipguard/sipguard.yaml >/dev/null && echo config-ok",
        timeout=60,
    )  # fmt: skip
    lines = probe.stdout.split()
    assert lines[0] == str(SIPGUARD_UID), probe.stdout
    assert lines[1:] == ["config-ok"], f"a compiler or mypyc in the image: {probe.stdout}"


# -- the compose loadtest profile ----------------------------------------------------------


def test_compose_loadtest_profile_completes_every_call(kit: Kit, tmp_path: Path) -> None:
    docker = kit.docker
    if not docker.compose:
        pytest.fail("neither docker-compose nor docker compose is installed")
    s = write_setup(tmp_path, drain_seconds=5)
    env = dict(
        docker.env,
        SIPGUARD_IMAGE=SIPGUARD_IMAGE,
        SIPP_IMAGE=SIPP_IMAGE,
        SIPGUARD_CONFIG_DIR=str(s["config_dir"]),
        SIPGUARD_VAR=str(s["var"]),
        SIPGUARD_STOP_GRACE="15s",
        LOAD_REPORT_DIR=str(s["report"]),
        **load_env(s, LOAD_RATE=LOAD_RATE, LOAD_DURATION=LOAD_DURATION),
    )
    compose = [*docker.compose, "-f", str(COMPOSE_FILE), "-p", RUN_ID, "--profile", "loadtest"]
    start = time.monotonic()
    try:
        up = subprocess.run(
            [*compose, "up", "--no-build", "--exit-code-from", "sipp-caller"],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    finally:
        subprocess.run(
            [*compose, "down", "--volumes", "--timeout", "15"],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
    kit.timings.append(f"compose loadtest profile: {time.monotonic() - start:.0f} s")
    output = up.stdout + up.stderr
    (tmp_path / "compose.log").write_text(output)
    results_path = s["report"] / "results.json"
    assert results_path.exists(), f"no load report (exit {up.returncode}):\n{output[-4000:]}"
    summary = json.loads(results_path.read_text())
    report_path = s["report"] / "README.md"
    assert report_path.exists(), f"no README.md in the report:\n{output[-4000:]}"
    report = report_path.read_text("utf-8")
    assert up.returncode == 0 and summary["ok"], f"{report}\n{output[-3000:]}"
    assert "compiled core (mypyc)" in output
    rows = {r["scenario"]: r for r in summary["scenarios"]}
    assert {name: r["planned"] for name, r in rows.items()} == PLANNED
    for name, row in rows.items():
        assert row["offered"] == row["completed"] == PLANNED[name], report
        assert row["failed"] == 0, report
    check_load_report(s["report"], summary, report)
    # sipguard did what the mix asks: 112 presented, #31# and Privacy: id withheld
    counters = summary["sipguard"]
    assert counters["sipguard_emergency_calls_total"] == PLANNED["emergency"]
    cdrs = read_cdrs(s["cdr"])
    ends = [r for r in cdrs if r["kind"] == "end"]
    assert len(ends) == sum(PLANNED.values())
    assert Counter(r["end_reason"] for r in ends) == {"caller_bye": 160, "cancel": 40}
    emergency = [r for r in ends if r["emergency"]]
    assert len(emergency) == PLANNED["emergency"]
    assert all(r["presentation"] == "allowed" for r in emergency)
    # privacy.csv in turn: #31# escaped, Privacy: id, #31# raw (withheld), Privacy: none
    withheld = [r for r in ends if r["presentation"] == "restricted"]
    assert len(withheld) == PLANNED["privacy"] * 3 // 4


def check_load_report(folder: Path, summary: dict[str, Any], report: str) -> None:
    """The load report of ``loadtests/run.py --report`` (testkit/report.py), from the
    containers: the runner's figures, the four plots, and sipguard's CPU and RSS as its
    own /metrics gave them, second by second."""
    result = summary["result"]
    total = sum(PLANNED.values())
    assert (result["attempted"], result["succeeded"], result["failed"]) == (total, total, 0)
    for figure in (
        f"| calls attempted | {total} |",
        f"| calls succeeded | {total} |",
        "| calls failed | 0 |",
        f"| **all** | {total} | {total} | {total} | 0 |",
        f"| CPU seconds | {result['cpu_s']:.2f} |",
        f"| peak RSS, MB | {result['peak_rss_kb'] / 1024:.1f} |",
        f"| setup p99, ms | {result['setup_p99_ms']:.0f} |",
        f"LOAD_RATE={LOAD_RATE} LOAD_DURATION={LOAD_DURATION}",
    ):
        assert figure in report, f"{figure!r} not in the report:\n{report}"
    # sipguard's own figures: it did work, and holds tens of MB
    assert 0 < result["cpu_s"] < LOAD_DURATION, result
    assert result["cpu_s_per_1k"] is not None and result["cpu_s_per_1k"] > 0, result
    assert 10 * 1024 < result["peak_rss_kb"] < 1024 * 1024, result
    # setup times: the callee rings 500 ms before it answers
    assert result["setup_p50_ms"] is not None and 490 <= result["setup_p50_ms"] <= 2000, result
    assert result["setup_p99_ms"] >= result["setup_p50_ms"], result
    samples = (folder / "sipp" / "proc_samples.csv").read_text().splitlines()
    # the event-loop lag probe's columns too, read from the same scrape (setup.png's panel)
    head = "t;cpu_s;rss_kb;" + ";".join(LAG_COLUMNS)
    assert samples[0] == head and len(samples) > LOAD_DURATION * 3 // 4, samples
    assert all(line.split(";")[3] for line in samples[1:]), samples  # lag_n read each time
    cpu = [float(line.split(";")[1]) for line in samples[1:]]
    assert cpu == sorted(cpu) and cpu[-1] > cpu[0], cpu
    assert summary["process_samples"] == len(samples) - 1
    for name in ("calls.png", "failures.png", "setup.png", "process.png"):
        assert f"]({name})" in report, name
        png = (folder / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
    # what it was made from: SIPp's statistics per scenario, the callee's, response times
    for name in (*PLANNED, "callee"):
        assert (folder / "sipp" / f"{name}_stat.csv").exists(), name
    assert list((folder / "sipp" / "plain").glob("*_rtt.csv")), "no -trace_rtt file"


# -- health check and drain ------------------------------------------------------------------


def test_health_check_turns_healthy_and_docker_stop_drains(kit: Kit, tmp_path: Path) -> None:
    docker = kit.docker
    drain = 12  # the calls in progress end by themselves about 5 s after the stop
    s = write_setup(tmp_path, drain_seconds=drain)
    grace = drain + 8  # the container's stop timeout: longer than drain_seconds
    names = {role: f"{RUN_ID}-{role}" for role in ("sipguard", "callee", "caller")}
    mounts = ["-v", f"{s['report']}:/report"]
    try:
        docker.run(
            "run", "--detach", "--name", names["sipguard"], "--network", "host",
            "--stop-timeout", str(grace),
            "-v", f"{s['config_dir']}:/etc/sipguard:ro", "-v", f"{s['var']}:/var/lib/sipguard",
            SIPGUARD_IMAGE,
        )  # fmt: skip

        def health() -> str:
            info = docker.inspect("container", names["sipguard"]) or {}
            state = info.get("State", {})
            assert state.get("Running"), docker.run("logs", names["sipguard"], check=False).stderr
            return str(state.get("Health", {}).get("Status", ""))

        took = wait_until("the health check says healthy", lambda: health() == "healthy", 60)
        kit.timings.append(f"healthy after {took:.1f} s")

        # ten calls, each held 5 s, in progress when docker stop comes
        env_args: list[str] = []
        for k, v in load_env(
            s, LOAD_MIX="plain:100", LOAD_RATE=5, LOAD_DURATION=2, LOAD_HOLD_MS=5000
        ).items():
            env_args += ["-e", f"{k}={v}"]
        for role in ("callee", "caller"):
            docker.run(
                "run", "--detach", "--name", names[role], "--network", "host", *env_args,
                *mounts, SIPP_IMAGE, role,
            )  # fmt: skip
        metrics_url = f"{s['metrics']}/metrics"
        wait_until(
            "ten calls in progress",
            lambda: metric_sum(scrape_metrics(metrics_url), "sipguard_active_calls") >= 10,
            30,
        )

        start = time.monotonic()
        stop = subprocess.Popen(
            ["docker", "stop", names["sipguard"]],
            env=docker.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # draining: /readyz says 503 at once, so that a load balancer stops sending
            wait_until(
                "/readyz 503",
                lambda: loadtest.http_status(f"{s['metrics']}/readyz") == 503,
                3,
                0.05,
            )
            stop.wait(grace + 15)
        finally:
            if stop.poll() is None:
                stop.kill()
                stop.wait(5)
        stopped_in = time.monotonic() - start
        kit.timings.append(f"docker stop drained in {stopped_in:.1f} s")
        info = docker.inspect("container", names["sipguard"])
        assert info is not None
        logs = docker.run("logs", names["sipguard"]).stderr
        assert info["State"]["ExitCode"] == 0, logs[-3000:]
        # it waited for the calls (each had seconds left), and not for docker's SIGKILL
        assert 2 < stopped_in < grace, f"stopped after {stopped_in:.1f} s (grace {grace} s)"
        assert "compiled core (mypyc)" in logs
        drained = re.search(rf"stopping: draining (\d+) calls for up to {drain}s", logs)
        assert drained and int(drained.group(1)) >= 1, logs[-3000:]
        assert re.search(r"INFO \S+ stopped$", logs, re.MULTILINE), logs[-3000:]

        # the calls in progress ended as the caller ended them, each with its CDRs
        waited = docker.run("wait", names["caller"], timeout=60).stdout.strip()
        assert waited == "0", (s["report"] / "results.json").read_text("utf-8")
        cdrs = read_cdrs(s["cdr"])
        ends = [r for r in cdrs if r["kind"] == "end"]
        assert len(ends) == 10
        assert {r["end_reason"] for r in ends} == {"caller_bye"}
        assert sum(r["kind"] == "start" for r in cdrs) == 10
    finally:
        for name in names.values():
            docker.run("rm", "--force", "--volumes", name, check=False, timeout=60)


def test_apt_mirror_reads_deb822_and_one_line_sources(tmp_path: Path) -> None:
    """The base's mirror comes from the host's apt sources, in either format."""
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "a.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb deb-src\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
    )
    assert dockerkit.apt_mirror(etc) == "http://mirror.invalid/debian"
    (etc / "sources.list.d" / "a.sources").unlink()
    (etc / "sources.list").write_text(
        "# a comment\ndeb [arch=amd64] http://other.invalid/debian bookworm main\n"
    )
    assert dockerkit.apt_mirror(etc) == "http://other.invalid/debian"
    (etc / "sources.list").write_text("deb http://other.invalid/debian trixie main\n")
    assert dockerkit.apt_mirror(etc) is None


def test_compose_stop_grace_is_longer_than_the_default_drain() -> None:
    """docker stop must not SIGKILL a sipguard that drains for the default time."""
    from sipguard.config.model import Config

    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    grace = compose["services"]["sipguard"]["stop_grace_period"]
    default = re.fullmatch(r"\$\{SIPGUARD_STOP_GRACE:-(\d+)s\}", grace)
    assert default is not None, grace
    assert int(default.group(1)) > Config.__dataclass_fields__["drain_seconds"].default


def test_the_image_harness_samples_the_event_loop_lag_with_cpu_and_rss(tmp_path: Path) -> None:
    """Without Docker: the SIPp image's sampler reads sipguard's lag probe from the very
    scrape that gives its CPU and RSS, so the report's latency figure has its lower panel."""
    import http.server
    import threading

    from testkit.report import SAMPLES, ProcSampler

    scrapes = [0]

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            scrapes[0] += 1
            n = scrapes[0]
            late = 1 if n > 2 else 0  # one probe late by 30 ms from the third scrape on
            body = "\n".join(
                [
                    f"process_cpu_seconds_total {0.5 * n}",
                    "process_resident_memory_bytes 52428800",
                    *(
                        f'sipguard_event_loop_lag_seconds_bucket{{le="{b}"}} {10 * n}'
                        for b in ("0.001", "0.002", "0.005", "0.01", "0.02")
                    ),
                    *(
                        f'sipguard_event_loop_lag_seconds_bucket{{le="{b}"}} {10 * n + late}'
                        for b in ("0.05", "0.1", "0.2", "0.5", "1.0", "+Inf")
                    ),
                    f"sipguard_event_loop_lag_seconds_count {10 * n + late}",
                    f"sipguard_event_loop_lag_max_seconds {0.03 if late else 0.001}",
                    "",
                ]
            ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        process = loadtest.SipguardProcess(f"http://127.0.0.1:{server.server_port}/metrics")
        with ProcSampler(process, tmp_path / SAMPLES, interval=0.05):
            deadline = time.monotonic() + 5
            while scrapes[0] < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        server.shutdown()
        server.server_close()
    lines = (tmp_path / SAMPLES).read_text().splitlines()
    assert lines[0] == "t;cpu_s;rss_kb;" + ";".join(LAG_COLUMNS)
    assert len(lines) >= 4 and all(line.split(";")[3] for line in lines[1:]), lines
    rows = [dict(zip(lines[0].split(";"), line.split(";"), strict=True)) for line in lines[1:]]
    late = [float(r["lag_n"]) - float(r["lag_le_0.01"]) for r in rows]
    assert late[0] == 0 and late[-1] == 1, rows  # the probe late by 30 ms, seen
    assert float(rows[-1]["lag_max_s"]) == 0.03 and process.rss_kb == 51200
