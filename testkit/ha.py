"""Several sipguards behind Kamailio on loopback: the balancer test and the load runner.

The layout (issue 17, ``deploy/kamailio/README.md``), one loopback address per role:

* the caller (SIPp uac, trunk ``customers``) on ``127.0.0.3``, the PBX (SIPp uas, trunk
  ``pbx``) on ``127.0.0.2``, as in :mod:`testkit.sipp`;
* Kamailio on ``127.0.0.10``: one port per trunk (``customers``, ``pbx``), started from
  the committed ``deploy/kamailio/kamailio.cfg`` with its defines filled in;
* sipguard instance *i* on ``127.0.0.(11+i)``: one listen entry per trunk
  (``trunks: [customers]`` and ``trunks: [pbx]``), its metrics on ``127.0.0.1``, its own
  CDR state directory, and CDRs in one shared PostgreSQL (or its own file sink).

The trunks' ``sources`` are the balancer's address plus the peers' own (so that the same
instance can also be called directly, for the comparisons); which trunk a request is on
is decided by the listen entry it arrives at, which is decided by the balancer port the
peer was given. Who may use a balancer port is Kamailio's own check: the address file
(``ADDR_LIST``, permissions module) written here gives group 1 (the customers port) the
caller's address and group 2 (the PBX port) the PBX's. Calls towards the PBX leave
sipguard for the PBX directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from testkit.kamailio import Kamailio, Raw
from testkit.sipp import (
    CALLEE_IP,
    CALLER_IP,
    REPO,
    SIPGUARD_IP,
    Setup,
    Sipguard,
    _merge,
    base_config,
    free_port,
)

BALANCER_IP = "127.0.0.10"
KAMAILIO_CFG = REPO / "deploy" / "kamailio" / "kamailio.cfg"
SET_CUSTOMERS = 1
SET_PBX = 2


def instance_ip(index: int) -> str:
    return f"127.0.0.{11 + index}"


class Instance:
    """One sipguard of the farm: its configuration, ports and process."""

    def __init__(
        self,
        index: int,
        workdir: Path,
        *,
        callee_port: int,
        dsn: str | None,
        overrides: dict[str, Any] | None = None,
        cpus: Sequence[int] | None = None,
    ) -> None:
        self.index = index
        self.ip = instance_ip(index)
        self.workdir = workdir
        self.customers_port = free_port(self.ip)
        self.pbx_port = free_port(self.ip)
        metrics_port = free_port(SIPGUARD_IP)
        cdr_dir = workdir / "cdr"
        cfg = base_config(
            sip_port=self.customers_port,
            metrics_port=metrics_port,
            callee_port=callee_port,
            cdr_dir=cdr_dir,
        )
        cfg["listen"] = [
            {"transport": "udp", "address": self.ip, "port": self.customers_port,
             "trunks": ["customers"]},
            {"transport": "udp", "address": self.ip, "port": self.pbx_port, "trunks": ["pbx"]},
        ]  # fmt: skip
        cfg["trunks"]["customers"]["sources"] = [f"{BALANCER_IP}/32", f"{CALLER_IP}/32"]
        cfg["trunks"]["pbx"]["sources"] = [f"{BALANCER_IP}/32", f"{CALLEE_IP}/32"]
        if dsn is not None:
            cfg["cdr"] = {
                "sink": "postgres",
                "dsn": dsn,
                "path": str(cdr_dir),
                "spool_path": str(workdir / "spool"),
            }
        if overrides:
            cfg = _merge(cfg, overrides)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "sipguard.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.setup = Setup(
            config_path=path,
            workdir=workdir,
            cdr_dir=cdr_dir,
            sip_port=self.customers_port,
            metrics_port=metrics_port,
            callee_port=callee_port,
            transport="udp",
            config=cfg,
        )
        self.cpus = cpus
        self.process = Sipguard(self.setup, cpus=cpus)

    @property
    def customers_addr(self) -> str:
        return f"{self.ip}:{self.customers_port}"

    def instance_tag(self) -> str:
        """The 8-hex-digit tag that starts every call id of this instance."""
        return (self.setup.cdr_dir / "instance").read_text().strip()

    def start(self) -> Instance:
        self.process.start()
        return self

    def restart(self) -> Instance:
        """A new process on the same configuration (after a stop or a SIGKILL)."""
        self.process.stop()
        self.process = Sipguard(self.setup, cpus=self.cpus)
        return self.start()

    def stop(self) -> None:
        self.process.stop()


class Farm:
    """N sipguard instances and, optionally, Kamailio in front of them."""

    def __init__(
        self,
        workdir: Path,
        instances: int,
        *,
        dsn: str | None = None,
        ping_interval: int = 1,
        fr_timer_ms: int = 1000,
        fr_inv_timer_ms: int = 120000,
        algorithm: int = 4,
        children: int = 4,
        shm_mb: int = 128,
        allocator: str | None = None,
        dispatch_log: bool = True,
        overrides: dict[str, Any] | None = None,
        instance_cpus: Sequence[Sequence[int] | None] | None = None,
        balancer_cpus: Sequence[int] | None = None,
        callee_port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.callee_port = callee_port or free_port(CALLEE_IP)
        self.instances = [
            Instance(
                i,
                workdir / f"sg{i}",
                callee_port=self.callee_port,
                dsn=dsn,
                overrides=overrides,
                cpus=instance_cpus[i] if instance_cpus else None,
            )
            for i in range(instances)
        ]
        self.customers_port = free_port(BALANCER_IP)
        self.pbx_port = free_port(BALANCER_IP)
        kdir = workdir / "kamailio"
        kdir.mkdir(parents=True, exist_ok=True)
        self.ds_list = kdir / "dispatcher.list"
        self.ds_list.write_text(self.dispatcher_list())
        self.address_list = kdir / "address.list"
        self.address_list.write_text(self.address_file())
        defines: dict[str, object] = {
            "LISTEN_CUSTOMERS": Raw(f"udp:{BALANCER_IP}:{self.customers_port}"),
            "LISTEN_PBX": Raw(f"udp:{BALANCER_IP}:{self.pbx_port}"),
            "PORT_CUSTOMERS": self.customers_port,
            "PORT_PBX": self.pbx_port,
            "DS_LIST": str(self.ds_list),
            "ADDR_LIST": str(self.address_list),
            "DS_PING_INTERVAL": ping_interval,
            "FR_TIMER": fr_timer_ms,
            "FR_INV_TIMER": fr_inv_timer_ms,
            "DS_ALG": algorithm,
            "CHILDREN": children,
        }
        if dispatch_log:
            defines["WITH_DISPATCH_LOG"] = True
        self.kamailio = Kamailio(
            KAMAILIO_CFG,
            kdir,
            sip_addr=(BALANCER_IP, self.customers_port),
            defines=defines,
            cpus=balancer_cpus,
            shm_mb=shm_mb,
            allocator=allocator,
        )

    def dispatcher_list(self) -> str:
        """Set 1: every instance's customers entry; set 2: every instance's pbx entry; each
        probed and reached from the balancer port of the same trunk."""
        lines = ["# setid destination flags priority attrs"]
        for setid, bal_port in ((SET_CUSTOMERS, self.customers_port), (SET_PBX, self.pbx_port)):
            for inst in self.instances:
                port = inst.customers_port if setid == SET_CUSTOMERS else inst.pbx_port
                lines.append(
                    f"{setid} sip:{inst.ip}:{port} 0 0 "
                    f"socket=udp:{BALANCER_IP}:{bal_port};duid=sg{inst.index}"
                )
        return "\n".join(lines) + "\n"

    @staticmethod
    def address_file() -> str:
        """The peers allowed on each balancer port (group = the port's dispatcher set):
        the caller on the customers port, the PBX on the PBX port; any source port."""
        return (
            "# group ip-address mask port tag\n"
            f"{SET_CUSTOMERS} {CALLER_IP} 32 0 customers\n"
            f"{SET_PBX} {CALLEE_IP} 32 0 pbx\n"
        )

    @property
    def customers_addr(self) -> str:
        return f"{BALANCER_IP}:{self.customers_port}"

    @property
    def pbx_addr(self) -> str:
        return f"{BALANCER_IP}:{self.pbx_port}"

    def start(self, balancer: bool = True) -> Farm:
        for inst in self.instances:
            inst.start()
        if balancer:
            self.kamailio.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.kamailio.stop()
        for inst in self.instances:
            with contextlib.suppress(Exception):
                inst.stop()

    @contextlib.contextmanager
    def running(self, balancer: bool = True) -> Iterator[Farm]:
        try:
            yield self.start(balancer)
        finally:
            self.stop()

    def dispatch_events(self) -> list[tuple[str, float, str]]:
        """The balancer's log lines ``dispatch``/``failover``/``silent`` (an instance that
        left an INVITE unanswered, taken out)/``dst-down``/``dst-up``, each
        as (event, unix time, destination URI), in the order they were logged."""
        out: list[tuple[str, float, str]] = []
        for line in self.kamailio.log_text().splitlines():
            parts = line.split()
            for i, word in enumerate(parts[:-2]):
                if word in ("dispatch", "failover", "silent", "dst-down", "dst-up"):
                    with contextlib.suppress(ValueError):
                        out.append((word, float(parts[i + 1]), parts[i + 2]))
                    break
        return out
