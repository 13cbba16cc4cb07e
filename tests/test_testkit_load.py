"""The load runner's CPU cap (``run.py --cpu-limit``, :class:`testkit.load.CappedSipguard`):
sipguard in a cgroup of its own whose CFS quota is a share of one core, for goodput runs
at five times a capacity one SIPp can offer. Needs root and the cgroup v1 cpu controller,
as the load runner does; the test says which is missing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from testkit.load import CGROUP_CPU, CPU_LIMIT_PERIOD_US, CappedSipguard, _setup
from testkit.sipp import proc_cpu_seconds


def test_a_capped_sipguard_runs_in_its_own_cgroup_which_goes_with_it(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not (CGROUP_CPU / "cgroup.procs").exists():
        pytest.fail("needs root and the cgroup v1 cpu controller at /sys/fs/cgroup/cpu")
    sg = CappedSipguard(_setup(tmp_path, "udp"), 25, cpus=None)
    sg.start()
    try:
        group = sg.group
        assert group is not None and group.is_dir()
        assert (group / "cpu.cfs_quota_us").read_text().strip() == str(CPU_LIMIT_PERIOD_US // 4)
        # every thread of it, the CDR writer's too, in the group
        tasks = {int(t) for t in (group / "tasks").read_text().split()}
        threads = {int(t) for t in os.listdir(f"/proc/{sg.pid}/task")}
        assert threads and threads <= tasks
        assert f"sipguard-load-{sg.pid}" in Path(f"/proc/{sg.pid}/cgroup").read_text()
        # idle, it is far below its cap; it answers as ever
        cpu0, t0 = proc_cpu_seconds(sg.pid), time.monotonic()
        time.sleep(0.5)
        assert (proc_cpu_seconds(sg.pid) - cpu0) / (time.monotonic() - t0) < 0.25
        assert sg.healthy()
    finally:
        sg.stop()
    assert sg.group is None and not group.exists()
