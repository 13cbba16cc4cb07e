"""The balancer figures of the load runner: sipguard alone, and behind Kamailio.

``loadtests/run.py --instances N --balancer kamailio`` runs, one after the other in one
invocation and at the same rate, duration and call length:

1. ``direct``: SIPp uac → one sipguard → SIPp uas (no balancer);
2. ``kamailio x1``: SIPp uac → Kamailio → one sipguard → SIPp uas;
3. ``kamailio xN``: SIPp uac → Kamailio → N sipguards → SIPp uas.

The farm is :class:`testkit.ha.Farm` (the committed ``deploy/kamailio/kamailio.cfg``, a
balancer port per trunk, instances on their own loopback addresses, file CDRs, log
level ``warning``), the caller the record-routing ``tests/data/sipp/ha/uac-rr.xml`` in
all three runs (ACK and BYE through the balancer when there is one). With ``pin``: SIPp
on core 0, instance *i* on core ``(1 + i) mod cores`` (one core each while there are
cores; on a 2-core machine the second instance shares core 0 with SIPp), Kamailio not
pinned. Measured per run: calls attempted/succeeded/failed, achieved calls/s
(succeeded over the time calls were placed), INVITE→200 setup time p50/p99, the CPU
seconds of the sipguard processes together and of Kamailio (its main process and every
worker, ``/proc``; run with 512 MB of shared memory and the TLSF allocator), each per
1,000 calls, and how the calls were spread (end records per instance). Measurements on
a shared VM: noisy, never asserted in a test.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from testkit.ha import Farm
from testkit.load import BUFF_SIZE, SIPP_CPU, say
from testkit.sipp import (
    CALLEE_IP,
    CALLER_IP,
    DATA,
    Sipp,
    free_port,
    percentile,
    read_cdrs,
)

UAC_RR = DATA / "ha" / "uac-rr.xml"


@dataclass
class BalancedResult:
    label: str
    instances: int
    balancer: bool
    rate: float
    duration_s: float
    hold_ms: int
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    achieved_cps: float = 0.0
    setup_p50_ms: float | None = None
    setup_p99_ms: float | None = None
    sipguard_cpu_s: float = 0.0
    sipguard_cpu_s_per_1k: float | None = None
    balancer_cpu_s: float = 0.0
    balancer_cpu_s_per_1k: float | None = None
    calls_per_instance: list[int] = field(default_factory=list)
    workdir: str = ""


def _instance_cpus(n: int, pin: bool) -> list[list[int] | None]:
    if not pin:
        return [None] * n
    cores = sorted(os.sched_getaffinity(0))
    return [[cores[(1 + i) % len(cores)]] for i in range(n)]


def run_farm(
    rate: float,
    duration_s: float,
    hold_ms: int,
    *,
    instances: int,
    balancer: bool,
    workdir: Path,
    pin: bool = True,
    quiet: bool = False,
    children: int = 4,
) -> BalancedResult:
    """One run through ``instances`` sipguards, behind Kamailio or (one instance) not."""
    if not balancer and instances != 1:
        raise ValueError("without a balancer there is one instance")
    label = f"kamailio x{instances}" if balancer else "direct"
    farm = Farm(
        workdir,
        instances,
        ping_interval=2,
        fr_timer_ms=2000,
        children=children,
        shm_mb=512,
        allocator="tlsf",
        dispatch_log=False,
        overrides={
            "log_level": "warning",
            "limits": {"max_calls": 50000, "emergency_max_calls": 200},
        },
        instance_cpus=_instance_cpus(instances, pin),
    )
    total = max(1, int(rate * duration_s))
    bound = int(total / rate + hold_ms / 1000 + 30)
    sipp_cpu = SIPP_CPU if pin else None
    remote = farm.customers_addr if balancer else farm.instances[0].customers_addr
    callee = Sipp(
        "uas", "uas", workdir=workdir, local_ip=CALLEE_IP, local_port=farm.callee_port,
        calls=total, timeout_s=bound + 10, trace_msg=False, buff_size=BUFF_SIZE, cpus=sipp_cpu,
    )  # fmt: skip
    caller = Sipp(
        "uac", UAC_RR, workdir=workdir, local_ip=CALLER_IP, local_port=free_port(CALLER_IP),
        remote=remote, calls=total, rate=rate, hold_ms=hold_ms, timeout_s=bound,
        trace_msg=False, trace_rtt=True, buff_size=BUFF_SIZE, cpus=sipp_cpu,
    )  # fmt: skip
    result = BalancedResult(label, instances, balancer, rate, duration_s, hold_ms)
    result.workdir = str(workdir)
    try:
        farm.start(balancer=balancer)
        callee.start()
        callee.wait_listening()
        time.sleep(0.5 if not balancer else 2.5)  # a first probe round: all instances in
        sg0 = sum(i.process.cpu_seconds() for i in farm.instances)
        k0 = farm.kamailio.cpu_seconds() if balancer else 0.0
        say(f"  {label}: {total} calls at {rate:g}/s, held {hold_ms} ms …", quiet)
        t0 = time.monotonic()
        res = caller.run()
        wall = time.monotonic() - t0
        result.sipguard_cpu_s = sum(i.process.cpu_seconds() for i in farm.instances) - sg0
        result.balancer_cpu_s = farm.kamailio.cpu_seconds() - k0 if balancer else 0.0
        callee.stop()
    finally:
        with contextlib.suppress(Exception):
            callee.stop()
        farm.stop()
    result.attempted = res.created
    result.succeeded = res.successful
    result.failed = res.failed + max(0, res.created - res.successful - res.failed)
    result.achieved_cps = res.successful / max(wall - hold_ms / 1000.0, 1e-3)
    result.setup_p50_ms = percentile(res.rtts_ms, 50)
    result.setup_p99_ms = percentile(res.rtts_ms, 99)
    if res.successful:
        result.sipguard_cpu_s_per_1k = result.sipguard_cpu_s / res.successful * 1000.0
        if balancer:
            result.balancer_cpu_s_per_1k = result.balancer_cpu_s / res.successful * 1000.0
    result.calls_per_instance = [
        sum(1 for r in read_cdrs(i.setup.cdr_dir) if r["kind"] == "end") for i in farm.instances
    ]
    return result


def run_balanced(
    rate: float,
    duration_s: float,
    hold_ms: int,
    *,
    instances: int,
    workdir: Path,
    pin: bool = True,
    quiet: bool = False,
) -> list[BalancedResult]:
    """The three runs: one instance directly, one behind Kamailio, ``instances`` behind
    Kamailio (the last two are one run when ``instances`` is 1)."""
    plan = [(1, False), (1, True)] + ([(instances, True)] if instances > 1 else [])
    return [
        run_farm(
            rate,
            duration_s,
            hold_ms,
            instances=n,
            balancer=b,
            workdir=workdir / f"{'kam' if b else 'direct'}-{n}",
            pin=pin,
            quiet=quiet,
        )
        for n, b in plan
    ]


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def balanced_header() -> str:
    return (
        f"{'run':<13} {'calls':>6} {'ok':>6} {'fail':>5} {'cps':>7} {'p50ms':>6} {'p99ms':>6}"
        f" {'sg cpu s':>8} {'sg s/1k':>8} {'kam cpu s':>9} {'kam s/1k':>8}  per instance"
    )


def balanced_row(r: BalancedResult) -> str:
    return (
        f"{r.label:<13} {r.attempted:>6} {r.succeeded:>6} {r.failed:>5}"
        f" {r.achieved_cps:>7.1f} {_num(r.setup_p50_ms, '.0f'):>6} {_num(r.setup_p99_ms, '.0f'):>6}"
        f" {r.sipguard_cpu_s:>8.2f} {_num(r.sipguard_cpu_s_per_1k, '.3f'):>8}"
        f" {r.balancer_cpu_s:>9.2f} {_num(r.balancer_cpu_s_per_1k, '.3f'):>8}"
        f"  {'/'.join(str(n) for n in r.calls_per_instance)}"
    )
