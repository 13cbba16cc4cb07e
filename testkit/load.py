"""The measuring library of the load runner: SIPp ``uac`` → an element → SIPp ``uas``.

``loadtests/run.py`` is its command line; the SIPp smoke test and the floor relay's test
run it too. The element between the two SIPp processes is sipguard (:func:`run_load`,
:func:`run_hold`, :func:`find_max`) or a peer process measured the same way
(:func:`run_peer`: the floor relay of :mod:`testkit.floor`, sippy in :mod:`testkit.sippy`).

sipguard runs as in production (privacy enforcement on an untrusted customer trunk,
file CDRs in a temporary directory), pinned to core 1 (``taskset -c 1``); both SIPp
processes are pinned to core 0 with ``-buff_size 4194304`` (``../shared/SIPP-NOTES.md``).
Every process is started here and stopped by its PID; every SIPp run is bounded by
``-m``, ``-timeout`` and a ``timeout`` wrapper.

Measured per run (:class:`LoadResult`): calls attempted, succeeded, failed; achieved
calls/s (succeeded over the time calls were being placed); SIPp retransmissions (both
sides); INVITE→200 setup time p50/p99 seen by the caller (``-trace_rtt``; steps of about
4 ms here, so 0 means under 4 ms); the element's CPU seconds during the run
(``/proc/PID/stat``) and per 1,000 calls; its peak RSS (``VmHWM``). These are
measurements, noisy on a shared VM: compare medians (:func:`median_result`), never
assert them in a test.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from testkit.report import SAMPLES, ProcSampler

if TYPE_CHECKING:  # imported where used: the SIPp image (docker/sipp) has no rtpengine
    from testkit.rtpengine import Rtpengine
from testkit.sipp import (
    CALLEE_IP,
    DIALLED,
    REPO,
    SIPGUARD_IP,
    Setup,
    Sipguard,
    free_port,
    metric_sum,
    percentile,
    read_cdrs,
    running,
    uac,
    uas,
    udp_drops,
    write_config,
)

SIPGUARD_CPU = (1,)
EMERGENCY_NUMBER = "112"  # in the load configuration's emergency_numbers (testkit.sipp)
SIPP_CPU = (0,)
# sipguard capped at this share of one core, in percent (None: not capped), set by
# ``run.py --cpu-limit``: a smaller capacity, so that one SIPp can offer five times it
CPU_LIMIT_PERCENT: float | None = None
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")  # the cgroup v1 cpu controller
CPU_LIMIT_PERIOD_US = 10_000  # short: the process is never held off the core for long
BUFF_SIZE = 4194304
FAIL_RATIO = 0.001  # "< 0.1% failed calls"
DEFAULT_FIND_MAX_RATES = (500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000)


@dataclass
class LoadResult:
    rate: float
    duration_s: float
    hold_ms: int
    transport: str
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    achieved_cps: float = 0.0
    retransmissions: int = 0
    setup_p50_ms: float | None = None
    setup_p99_ms: float | None = None
    setup_max_ms: float | None = None
    # emergency calls (112) placed beside the load by a second caller (``emergency_rate``)
    emergency_attempted: int = 0
    emergency_succeeded: int = 0
    # the median CPU ms of the speed probe's fixed work on the element's core during the
    # run (testkit.report.speed_probe): how fast the machine was; None where not measured
    speed_ms: float | None = None
    cpu_s: float = 0.0
    cpu_s_per_1k: float | None = None
    peak_rss_kb: int = 0
    loop_pause_max_ms: float | None = None  # sipguard's own probe (a peer has none)
    cdr_end_records: int = 0
    writes_cdrs: bool = True  # sipguard does; the peers measured beside it (sippy, floor) not
    element: str = "sipguard"  # or the peer's label (sippy, the floor relay)
    relay_sessions_left: int | None = None  # --anchor: rtpengine sessions after the run
    uac_exit: int | None = None
    placing_s: float = 0.0  # the time calls were being placed (wall time less the hold)
    failures: dict[str, int] = field(default_factory=dict)
    udp_drops: dict[str, int] = field(default_factory=dict)
    workdir: str = ""

    @property
    def failed_ratio(self) -> float:
        return self.failed / self.attempted if self.attempted else 1.0

    @property
    def offered_cps(self) -> float:
        """Calls per second the SIPp uac placed (below the rate asked when it cannot)."""
        return self.attempted / self.placing_s if self.placing_s else 0.0

    @property
    def ok(self) -> bool:
        return self.attempted > 0 and self.failed_ratio < FAIL_RATIO


@dataclass
class HoldResult:
    target_calls: int
    held_calls: int = 0
    rss_idle_kb: int = 0
    rss_filled_kb: int = 0  # as soon as every call is up
    rss_held_kb: int = 0  # after the settle time: the set-up transactions are gone
    peak_rss_kb: int = 0
    bytes_per_call: float | None = None
    bytes_per_call_filled: float | None = None
    settle_s: float = 0.0
    cpu_s: float = 0.0
    failed: int = 0
    workdir: str = ""


def say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _setup(
    workdir: Path,
    transport: str,
    limits: dict[str, int] | None = None,
    relay: str | None = None,
) -> Setup:
    overrides: dict[str, Any] = {
        "log_level": "warning",  # the INFO line per call is not what is measured
        "limits": {"max_calls": 50000, "emergency_max_calls": 200, **(limits or {})},
    }
    if relay is not None:  # every call anchored through the rtpengine at ``relay``
        overrides["rtpengine"] = {"control": [relay]}
        overrides["trunks"] = {"customers": {"media": "anchor"}}
    return write_config(workdir, target_transport=transport, overrides=overrides)


# rtpengine's media ports under --anchor: below Linux's ephemeral range, 4 per call (an
# RTP/RTCP pair per side): 5,500 calls at once (rtpengine skips a port it cannot bind)
ANCHOR_PORTS = (10000, 32000)


@contextlib.contextmanager
def anchoring(workdir: Path, cpus: Sequence[int] | None) -> Iterator[Rtpengine]:
    """Debian's rtpengine for a load run, pinned to ``cpus`` (the SIPp core: sipguard's
    own stays sipguard's), stopped by its PID on the way out."""
    from testkit.rtpengine import Rtpengine

    # WARNING, not INFO: a log line per ng command is not what is measured
    relay = Rtpengine(root=workdir / "rtpengine", extra=["--log-level=4"])
    relay.port_min, relay.port_max = ANCHOR_PORTS
    relay.start()
    try:
        if cpus is not None:
            for task in Path(f"/proc/{relay.proc.pid if relay.proc else 0}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), set(cpus))
        yield relay
    finally:
        relay.stop()


def peer_setup(workdir: Path) -> Setup:
    """A :class:`Setup` for the harness's uac and uas around a peer element (sippy, the
    floor relay), which listens where sipguard would and needs no configuration file."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Setup(
        config_path=workdir / "none",
        workdir=workdir,
        cdr_dir=workdir / "cdr",
        sip_port=free_port(SIPGUARD_IP),
        metrics_port=0,
        callee_port=free_port(CALLEE_IP),
        transport="udp",
        config={},
    )


def _pins(pin: bool) -> tuple[Sequence[int] | None, Sequence[int] | None]:
    return (SIPGUARD_CPU, SIPP_CPU) if pin else (None, None)


def _drops_for(setup: Setup) -> dict[str, int]:
    ports = {setup.sip_port, setup.callee_port}
    return {k: v for k, v in udp_drops().items() if int(k.rsplit(":", 1)[1]) in ports and v}


class Element(Protocol):
    """The element under test between the SIPp uac and uas: sipguard, or a peer."""

    def start(self) -> object: ...

    def stop(self) -> object: ...

    def cpu_seconds(self) -> float: ...

    def status(self) -> dict[str, int]: ...


class CappedSipguard(Sipguard):
    """sipguard in a cgroup of its own (v1 ``cpu`` controller: needs root) whose CFS
    quota is ``percent`` of one core, every :data:`CPU_LIMIT_PERIOD_US`. The quota counts
    the kernel's work for the process too (its system calls), so calls and refusals keep
    their costs relative to each other; only the capacity shrinks. The group is removed
    when the process is stopped."""

    def __init__(self, setup: Setup, percent: float, cpus: Sequence[int] | None) -> None:
        super().__init__(setup, cpus=cpus)
        self.percent = percent
        self.group: Path | None = None

    def start(self, timeout: float = 15.0) -> CappedSipguard:
        super().start(timeout)
        group = CGROUP_CPU / f"sipguard-load-{self.pid}"
        try:
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text(str(CPU_LIMIT_PERIOD_US))
            quota = int(CPU_LIMIT_PERIOD_US * self.percent / 100)
            (group / "cpu.cfs_quota_us").write_text(str(quota))
            (group / "cgroup.procs").write_text(str(self.pid))  # every thread (v1)
        except OSError as exc:
            self.group = group if group.exists() else None
            self.stop()
            raise SystemExit(
                f"--cpu-limit needs root and the cgroup v1 cpu controller: {exc}"
            ) from exc
        self.group = group
        return self

    def stop(self, grace: float = 15.0) -> int | None:
        try:
            return super().stop(grace)
        finally:
            group, self.group = self.group, None
            if group is not None:
                with contextlib.suppress(OSError):
                    group.rmdir()  # empty once the process has exited


def run_load(
    rate: float,
    duration_s: float,
    hold_ms: int = 1000,
    *,
    workdir: Path,
    transport: str = "udp",
    pin: bool = True,
    calls: int | None = None,
    quiet: bool = False,
    uas_scenario: str | Path = "uas",
    limits: dict[str, int] | None = None,
    uac_scenario: str | Path = "uac",
    service: str = DIALLED,
    anchor: bool = False,
    emergency_rate: float = 0.0,
) -> LoadResult:
    """One run: ``calls`` (default rate * duration) calls at ``rate``, each held ``hold_ms``.

    ``uas_scenario``: SIPp's built-in ``uas``, or an XML file for the callee; ``limits``:
    fields of sipguard's ``limits`` section to set (e.g. ``overload_queue_kb``);
    ``uac_scenario`` and ``service``: the caller's scenario and the number it dials;
    ``anchor``: every call's media anchored through a real rtpengine (on the SIPp core);
    ``emergency_rate``: 112 calls per second placed beside them from the same trunk.
    """
    sg_cpu, sipp_cpu = _pins(pin)
    with contextlib.ExitStack() as stack:
        relay = stack.enter_context(anchoring(workdir, sipp_cpu)) if anchor else None
        setup = _setup(workdir, transport, limits, relay.control if relay else None)
        sipguard = (
            Sipguard(setup, cpus=sg_cpu)
            if CPU_LIMIT_PERCENT is None
            else CappedSipguard(setup, CPU_LIMIT_PERCENT, cpus=sg_cpu)
        )
        result = run_element(
            sipguard,
            setup,
            rate,
            duration_s,
            hold_ms,
            transport=transport,
            pin=pin,
            calls=calls,
            quiet=quiet,
            label="sipguard+rtpengine" if anchor else "",
            uas_scenario=uas_scenario,
            uac_scenario=uac_scenario,
            service=service,
            emergency_rate=emergency_rate,
        )
        if relay is not None:
            from testkit.rtpengine import NgError

            # every session deleted by its call's end (sipguard's own count would not see
            # a lost delete): what rtpengine still holds is what anchoring leaked
            try:  # at most 1000 named: the reply is one datagram
                result.relay_sessions_left = len(relay.list_calls(1000))
            except NgError:
                result.relay_sessions_left = -1  # no reply: rtpengine itself is stuck
    result.cdr_end_records = sum(1 for r in read_cdrs(setup.cdr_dir) if r["kind"] == "end")
    return result


def run_element(
    element: Element,
    setup: Setup,
    rate: float,
    duration_s: float,
    hold_ms: int = 1000,
    *,
    transport: str = "udp",
    pin: bool = True,
    calls: int | None = None,
    quiet: bool = False,
    label: str = "",
    uas_scenario: str | Path = "uas",
    uac_scenario: str | Path = "uac",
    service: str = DIALLED,
    emergency_rate: float = 0.0,
) -> LoadResult:
    """SIPp uac → ``element`` (listening on ``setup.sip_port``) → SIPp uas, measured.

    ``element`` is not started yet; it is started here, then the uas, and both are
    stopped by PID on the way out. Its CPU seconds and peak RSS come from ``/proc``.
    With ``emergency_rate``, a second SIPp uac (``sos``) on the caller's address dials
    112 at that rate while the load runs (its own statistics, not the load's).
    """
    tcp = transport == "tcp"
    total = calls if calls is not None else max(1, int(rate * duration_s))
    place_s = total / rate
    _, sipp_cpu = _pins(pin)
    bound = int(place_s + hold_ms / 1000 + 30)
    sos_calls = max(1, int(emergency_rate * place_s)) if emergency_rate > 0 else 0
    sos = (
        uac(
            setup,
            "sos",
            scenario=uac_scenario,
            service=EMERGENCY_NUMBER,
            calls=sos_calls,
            rate=emergency_rate,
            hold_ms=hold_ms,
            timeout_s=bound,
            tcp=tcp,
            trace_msg=False,
            buff_size=BUFF_SIZE,
            cpus=sipp_cpu,
        )
        if sos_calls
        else None
    )
    callee = uas(
        setup,
        scenario=uas_scenario,
        calls=total + sos_calls,
        timeout_s=bound + 10,
        tcp=tcp,
        trace_msg=False,
        buff_size=BUFF_SIZE,
        cpus=sipp_cpu,
    )
    caller = uac(
        setup,
        scenario=uac_scenario,
        service=service,
        calls=total,
        rate=rate,
        hold_ms=hold_ms,
        timeout_s=bound,
        tcp=tcp,
        trace_msg=False,
        trace_rtt=True,
        buff_size=BUFF_SIZE,
        cpus=sipp_cpu,
    )
    result = LoadResult(rate, duration_s, hold_ms, transport, workdir=str(setup.workdir))
    result.element = label or "sipguard"
    sos_res = None
    try:
        element.start()
        callee.start()
        callee.wait_listening()
        time.sleep(0.2)
        cpu0 = element.cpu_seconds()
        who = f"{label}: " if label else ""
        say(f"  {who}{total} calls at {rate:g}/s, held {hold_ms} ms, {transport} …", quiet)
        t0 = time.monotonic()
        # CPU and RSS for --report, and the machine's speed on the element's core
        element_cpus = _pins(pin)[0]
        speed_core = element_cpus[0] if element_cpus else None
        with ProcSampler(element, setup.workdir / SAMPLES, speed_core=speed_core) as sampler:
            if sos is not None:
                sos.start()
            res = caller.run()
            sos_res = sos.wait(timeout=bound + 10) if sos is not None else None
        wall = time.monotonic() - t0
        result.speed_ms = sampler.speed_median()
        result.cpu_s = element.cpu_seconds() - cpu0
        result.peak_rss_kb = element.status().get("VmHWM", 0)
        result.udp_drops = _drops_for(setup)
        result.loop_pause_max_ms = _loop_pause_max_ms(element)
        callee_res = callee.stop()
        element.stop()
    finally:
        for p in (element, callee, *((sos,) if sos is not None else ())):
            with contextlib.suppress(Exception):
                p.stop()
    if sos_res is not None:
        result.emergency_attempted = sos_res.created
        result.emergency_succeeded = sos_res.successful
    result.attempted = res.created
    result.succeeded = res.successful
    result.failed = res.failed + max(0, res.created - res.successful - res.failed)
    result.uac_exit = res.returncode
    result.failures = res.failure_counters()
    result.retransmissions = res.retransmissions + callee_res.retransmissions
    placing = max(wall - hold_ms / 1000.0, 1e-3)
    result.placing_s = placing
    result.achieved_cps = res.successful / placing
    rtts = res.rtts_ms
    result.setup_p50_ms = percentile(rtts, 50)
    result.setup_p99_ms = percentile(rtts, 99)
    result.setup_max_ms = max(rtts) if rtts else None
    if res.successful:
        result.cpu_s_per_1k = result.cpu_s / res.successful * 1000.0
    return result


def run_peer(
    make: Callable[[Setup], Element],
    label: str,
    rate: float,
    duration_s: float,
    hold_ms: int = 1000,
    *,
    workdir: Path,
    pin: bool = True,
    quiet: bool = False,
    uas_scenario: str | Path = "uas",
    uac_scenario: str | Path = "uac",
    service: str = DIALLED,
) -> LoadResult:
    """One run of :func:`run_element` with a peer element made by ``make`` (sippy, the
    floor relay, Kamailio: UDP only, no configuration file of ours, no CDRs)."""
    setup = peer_setup(workdir)
    result = run_element(
        make(setup),
        setup,
        rate,
        duration_s,
        hold_ms,
        transport="udp",
        pin=pin,
        quiet=quiet,
        label=label,
        uas_scenario=uas_scenario,
        uac_scenario=uac_scenario,
        service=service,
    )
    result.writes_cdrs = False
    return result


def use_build(*, pure: bool) -> str:
    """Make the sipguard processes started here run the compiled build, unless ``pure``.

    The build is ``tools/build_native.py --out build/native`` (rebuilt only when a source
    changed), made and checked with the Python that runs sipguard (the venv's); the
    processes inherit ``PYTHONPATH`` pointing at it. Returns what runs.
    """
    venv_python = REPO / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    native = REPO / "build" / "native"
    if pure:
        return "pure-Python core"
    built = subprocess.run(
        [python, str(REPO / "tools" / "build_native.py"), "--out", str(native)],
        check=False,
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        sys.exit(f"compiling failed (--pure runs without):\n{built.stdout}{built.stderr}")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(native), os.environ.get("PYTHONPATH", "")) if p
    )
    check = subprocess.run(  # what sipguard will import, with that PYTHONPATH, elsewhere
        [python, "-c", "import sipguard.b2bua.core as c; print(c.__file__)"],
        cwd=tempfile.gettempdir(),  # as sipguard runs: not in the tree, whose sources come first
        check=True,
        capture_output=True,
        text=True,
    )
    if not check.stdout.strip().endswith((".so", ".pyd")):
        sys.exit(f"the compiled build is not what runs: {check.stdout.strip()}")
    return f"compiled core (mypyc, {native.relative_to(REPO)})"


def _loop_pause_max_ms(element: Element) -> float | None:
    """The longest event-loop pause sipguard measured (its lag probe), in ms."""
    if not isinstance(element, Sipguard):
        return None
    try:
        value = element.metrics().get("sipguard_event_loop_lag_max_seconds")
    except OSError:
        return None
    return None if value is None else value * 1000.0


def run_hold(
    calls: int = 10000,
    *,
    workdir: Path,
    rate: float = 500,
    settle_s: float = 35.0,
    pin: bool = True,
    warmup_calls: int = 200,
    quiet: bool = False,
) -> HoldResult:
    """Hold ``calls`` calls up at once; RSS with them up minus RSS idle, per call.

    sipguard first carries ``warmup_calls`` short calls (imports, caches), then the RSS
    is read idle; the held calls are placed at ``rate`` with SIPp ``-l calls`` and a long
    ``-d``. The RSS is read when ``sipguard_active_calls`` reaches ``calls`` ("filled")
    and again ``settle_s`` later ("held"): by then the set-up transactions of the calls
    have ended (64*T1 = 32 s), and what is left is what a call costs while it is up.
    """
    setup = _setup(workdir, "udp")
    sg_cpu, sipp_cpu = _pins(pin)
    sipguard = Sipguard(setup, cpus=sg_cpu)
    result = HoldResult(calls, settle_s=settle_s, workdir=str(workdir))
    total = calls + warmup_calls
    hold_s = int(calls / rate + settle_s + 60)
    callee = uas(
        setup,
        calls=total,
        timeout_s=hold_s + 120,
        trace_msg=False,
        buff_size=BUFF_SIZE,
        cpus=sipp_cpu,
    )
    warm = uac(
        setup,
        "warmup",
        calls=warmup_calls,
        rate=min(rate, 200),
        hold_ms=100,
        timeout_s=60,
        trace_msg=False,
        buff_size=BUFF_SIZE,
        cpus=sipp_cpu,
    )
    held = uac(
        setup,
        "held",
        calls=calls,
        rate=rate,
        limit=calls,
        hold_ms=hold_s * 1000,
        timeout_s=hold_s + 60,
        trace_msg=False,
        buff_size=BUFF_SIZE,
        cpus=sipp_cpu,
    )

    def active() -> float:
        try:
            return metric_sum(sipguard.metrics(), "sipguard_active_calls")
        except OSError:
            return -1.0

    with running(callee, held, sipguard):
        sipguard.start()
        callee.start()
        callee.wait_listening()
        cpu0 = sipguard.cpu_seconds()
        say(f"  warm-up: {warmup_calls} short calls …", quiet)
        warm_res = warm.run()
        time.sleep(1.0)
        result.rss_idle_kb = sipguard.status().get("VmRSS", 0)
        say(f"  placing {calls} calls at {rate:g}/s …", quiet)
        held.start()
        deadline = time.monotonic() + calls / rate + 60
        up = 0.0
        while time.monotonic() < deadline:
            time.sleep(0.5)
            up = active()
            if up >= calls or held.proc is None or held.proc.poll() is not None:
                break
        time.sleep(1.0)  # the last ACKs
        result.rss_filled_kb = sipguard.status().get("VmRSS", 0)
        say(f"  {up:.0f} calls up; settling {settle_s:g} s …", quiet)
        time.sleep(settle_s)
        result.held_calls = int(active())
        status = sipguard.status()
        result.rss_held_kb = status.get("VmRSS", 0)
        result.peak_rss_kb = status.get("VmHWM", 0)
        result.cpu_s = sipguard.cpu_seconds() - cpu0
        held_res = held.stop()
        callee.stop()
        sipguard.stop(grace=30)
    result.failed = warm_res.failed + held_res.failed
    if result.held_calls > 0:
        n = result.held_calls
        result.bytes_per_call = (result.rss_held_kb - result.rss_idle_kb) * 1024.0 / n
        result.bytes_per_call_filled = (result.rss_filled_kb - result.rss_idle_kb) * 1024.0 / n
    return result


def find_max(
    rates: Sequence[float],
    duration_s: float,
    hold_ms: int,
    *,
    workdir: Path,
    transport: str = "udp",
    pin: bool = True,
    quiet: bool = False,
    on_result: Callable[[LoadResult], None] | None = None,
    limits: dict[str, int] | None = None,
) -> tuple[float | None, list[LoadResult]]:
    """Step the rate up; the highest rate with < 0.1% failed calls (stops at the first miss)."""
    best: float | None = None
    results: list[LoadResult] = []
    for rate in rates:
        r = run_load(
            rate,
            duration_s,
            hold_ms,
            workdir=workdir / f"rate-{rate:g}",
            transport=transport,
            pin=pin,
            quiet=quiet,
            limits=limits,
        )
        results.append(r)
        if on_result is not None:
            on_result(r)
        if not r.ok:
            break
        best = rate
    return best, results


# -- output ----------------------------------------------------------------------------------

COLUMNS = (
    ("rate", "{:>6g}", "rate/s"),
    ("attempted", "{:>9d}", "attempted"),
    ("succeeded", "{:>9d}", "succeeded"),
    ("failed", "{:>6d}", "failed"),
    ("achieved_cps", "{:>8.0f}", "calls/s"),
    ("retransmissions", "{:>7d}", "retrans"),
    ("setup_p50_ms", "{:>7}", "p50 ms"),
    ("setup_p99_ms", "{:>7}", "p99 ms"),
    ("cpu_s", "{:>7.2f}", "cpu s"),
    ("cpu_s_per_1k", "{:>9}", "cpu s/1k"),
    ("peak_rss_kb", "{:>8}", "peak MB"),
    ("loop_pause_max_ms", "{:>9}", "pause ms"),
)


def _cell(name: str, fmt: str, value: Any) -> str:
    if value is None:
        return fmt.replace("d}", "}").replace(".0f}", "}").replace(".2f}", "}").format("-")
    if name in ("setup_p50_ms", "setup_p99_ms", "loop_pause_max_ms"):
        return fmt.format(f"{value:.0f}")
    if name == "cpu_s_per_1k":
        return fmt.format(f"{value:.3f}")
    if name == "peak_rss_kb":
        return fmt.format(f"{value / 1024:.1f}")
    return fmt.format(value)


def header() -> str:
    widths = [len(_cell(n, f, 0 if "d}" in f else 0.0)) for n, f, _ in COLUMNS]
    return "  ".join(t.rjust(w) for (_, _, t), w in zip(COLUMNS, widths, strict=True))


def row(r: LoadResult) -> str:
    line = "  ".join(_cell(n, f, getattr(r, n)) for n, f, _ in COLUMNS)
    notes = []
    if r.failures:
        notes.append(",".join(f"{k.replace('(C)', '')}={v}" for k, v in r.failures.items()))
    if r.udp_drops:
        notes.append(f"udp drops {r.udp_drops}")
    if r.writes_cdrs and r.cdr_end_records != r.attempted:
        notes.append(f"CDR end records {r.cdr_end_records}")
    if r.relay_sessions_left:
        notes.append(f"rtpengine sessions left {r.relay_sessions_left}")
    if r.element != "sipguard":
        notes.insert(0, r.element)
    return line + ("  " + "; ".join(notes) if notes else "")


def median_result(results: list[LoadResult]) -> LoadResult:
    """A result whose numeric figures are the medians of ``results`` (counts summed)."""
    first = results[0]
    med = LoadResult(first.rate, first.duration_s, first.hold_ms, first.transport)
    med.writes_cdrs, med.element = first.writes_cdrs, first.element

    def m(name: str) -> Any:
        vals = [getattr(r, name) for r in results if getattr(r, name) is not None]
        return statistics.median(vals) if vals else None

    for name in ("achieved_cps", "setup_p50_ms", "setup_p99_ms", "cpu_s", "cpu_s_per_1k"):
        setattr(med, name, m(name))
    med.peak_rss_kb = int(m("peak_rss_kb") or 0)
    for name in ("attempted", "succeeded", "failed", "retransmissions", "cdr_end_records"):
        setattr(med, name, sum(getattr(r, name) for r in results))
    return med
