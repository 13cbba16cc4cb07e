"""The driver: sockets, the event loop, the clock, signals, reload, drain, metrics.

This is the only code that touches I/O. It feeds the sans-IO core (:class:`B2BUA`) with
what arrives, sends what the core put in its outbox, hands CDR records to the writer,
and keeps exactly one ``call_at`` armed for the core's next deadline.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import resource
import signal
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import Gauge, ProcessCollector, generate_latest

from sipguard.b2bua.core import B2BUA
from sipguard.b2bua.records import KNOWN_KINDS
from sipguard.cdr.writer import CdrWriter
from sipguard.config.loader import ConfigError, load_config
from sipguard.config.model import Config
from sipguard.metrics import Metrics
from sipguard.net.dns import TargetResolver
from sipguard.net.httpd import MetricsServer
from sipguard.net.limits import (
    HEADER_TIMEOUT,
    ConnectionLimits,
    HeadDeadlines,
    descriptor_plan,
)
from sipguard.net.media import NgSockets, resolve_names
from sipguard.net.pump import Pump
from sipguard.net.routing import fails_with, reroute
from sipguard.net.throttle import OverloadLog, Throttle
from sipguard.net.tlspeer import expected_name, may_carry
from sipguard.net.transport import StreamConnection, TcpListener, UdpEndpoint
from sipguard.sip.transaction import Flow

log = logging.getLogger("sipguard")

# the guard collects when the objects tracked by the cyclic collector have grown by this
# many more than the calls and transactions alive account for (GC_OBJECTS_PER_ITEM each:
# about 27 per call in progress, 9 per transaction kept for 64*T1, measured)
GC_GUARD_OBJECTS = 1_000_000
GC_OBJECTS_PER_ITEM = 64
LIMIT_LOG_S = 10.0  # at most one log line this often about connections refused or closed


# Above this many messages per second the driver sends once per loop iteration (bursts:
# 0.50 → 0.39 CPU ms per call at 1,900 calls/s); below, at once after each message (lone
# datagrams: a queued callback for each could only add work).
# SIPGUARD_BATCH_SENDS_ABOVE overrides it (0: always; the tests of the batched path).
def _batch_sends_above(default: float = 5000.0) -> float:
    text = os.environ.get("SIPGUARD_BATCH_SENDS_ABOVE")
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        log.warning("SIPGUARD_BATCH_SENDS_ABOVE=%r is no rate (messages/s): %s", text, default)
        return default
    return value


BATCH_SENDS_ABOVE = _batch_sends_above()


def batch_sends(messages: int, seconds: float, above: float = BATCH_SENDS_ABOVE) -> bool:
    """Whether ``messages`` received in ``seconds`` call for sends batched per iteration."""
    return above <= 0 or messages > above * seconds


def tune_gc() -> None:
    """Keep the cyclic garbage collector from ever pausing the event loop.

    A collection walks every object of the generations it collects. Under load the old
    generation holds every call in progress and every transaction kept for 64*T1:
    hundreds of thousands of objects, so a full collection takes 0.1 to 0.7 s during which no
    datagram is read (the pauses that made sippy fail, ``SIPP-NOTES.md``), and even the
    young collections take 2 to 50 ms. sipguard makes no reference cycles per call or per
    message (``tests/test_net_gc.py``): reference counting frees each object the moment it is
    no longer used, and a collection would find nothing. So start-up objects are frozen and
    the automatic collector is turned off; :class:`GcGuard` runs it only if objects
    accumulate all the same (a cycle somewhere), and counts what it found.
    """
    gc.collect()
    gc.freeze()
    gc.disable()


def core_build() -> str:
    """Whether the per-message path runs compiled (``tools/build_native.py``) or pure."""
    import sipguard.b2bua.core as core_module

    compiled = (core_module.__file__ or "").endswith((".so", ".pyd"))
    return "compiled core (mypyc)" if compiled else "pure-Python core"


class GcGuard:
    """Runs a full collection when tracked objects grow more than the calls explain.

    With the collector off, CPython's generation-0 count rises by one for each new object
    the collector tracks and falls by one for each freed (never below 0): it is the growth
    of the live set since the last collection, read for nothing. Calls and transactions
    explain up to :data:`GC_OBJECTS_PER_ITEM` objects each (``live()`` counts them); only
    objects kept alive by reference cycles make the count pass that by ``limit``. Then a
    full collection runs (a pause: about 0.4 us per live object) and is counted and logged.
    """

    def __init__(
        self, metrics: Metrics, live: Callable[[], int], limit: int = GC_GUARD_OBJECTS
    ) -> None:
        self.metrics = metrics
        self.live = live
        self.limit = limit

    def check(self) -> float:
        """Collect if the growth passed the bound; the seconds the collection took, or 0."""
        pending = gc.get_count()[0]
        self.metrics.gc_pending.set(pending)
        if pending <= self.limit + GC_OBJECTS_PER_ITEM * self.live():
            return 0.0
        start = time.perf_counter()
        found = gc.collect()
        took = time.perf_counter() - start
        self.metrics.gc_collections.inc()
        self.metrics.gc_unreachable.inc(found)
        log.warning(
            "%d tracked objects more than the calls explain: a full garbage collection "
            "found %d unreachable objects in %.0f ms",
            pending,
            found,
            took * 1000,
        )
        return took


class Driver:
    """Feeds the core, flushes its output, arms its timer. One per process."""

    def __init__(self, config: Config, metrics: Metrics, writer: CdrWriter | None) -> None:
        self.config = config
        self.metrics = metrics
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.core = B2BUA(
            config,
            metrics,
            instance=writer.instance if writer is not None else None,
            wall_offset=time.time() - self.loop.time(),
        )
        self.udp: dict[int, UdpEndpoint] = {}
        self.tcp: dict[int, TcpListener] = {}
        self.conns: dict[int, StreamConnection] = {}
        self.conn_by_addr: dict[tuple[str, str, int], StreamConnection] = {}
        self._next_conn = 0
        self.stopping = asyncio.Event()
        self._exported: dict[str, dict[str, int]] = {}
        self._exported_rtx = 0
        self._exported_withheld = 0
        self.overload_log = OverloadLog()
        self._client_contexts: dict[tuple[int, bool], ssl.SSLContext] = {}
        # TCP/TLS: the connection limits (the total capped by the descriptors at start),
        # the connections that owe a message head, and how often refusals are said
        limits = config.limits
        self.limits = ConnectionLimits(limits.tcp_max_connections, limits.tcp_max_per_source)
        self.heads = HeadDeadlines()
        self._refusal_log = Throttle(LIMIT_LOG_S)
        self._timeout_log = Throttle(LIMIT_LOG_S)
        open_conns = Gauge(
            "sipguard_tcp_connections",
            "TCP/TLS connections open (accepted, and opened by sipguard)",
            registry=metrics.registry,
        )
        open_conns.set_function(lambda: float(self.limits.open))
        # rtpengine: the ng control sockets, and what of the client's counters is exported
        self.ng = NgSockets(self.media_feed)
        # the per-message path (compiled): feed, flush, send and the core's one timer
        self.pump = Pump(
            self.core,
            self.loop,
            self.udp,
            self.send_stream,
            self.ng,
            writer,
            batching=BATCH_SENDS_ABOVE <= 0,
        )
        self.feed: Callable[[bytes, Flow], None] = self.pump.feed
        self.flush: Callable[[], None] = self.pump.flush
        self._exported_ng: dict[tuple[str, str], int] = {}
        self._exported_ng_rtx = 0
        self._exported_ng_timeouts = 0
        self._exported_ng_stray = 0
        metrics.rtpengine_relays_up.set_function(self._relays_up)

    # -- input -----------------------------------------------------------------------------

    def media_feed(self, data: bytes, addr: tuple[str, int]) -> None:
        """A datagram on an ng control socket: to the core, then what it made is sent."""
        try:
            self.core.media_receive(data, addr, self.loop.time())
        except Exception:
            log.exception("internal error handling an ng reply")
        self.flush()

    async def media_start(self, config: Config) -> None:
        """The ng sockets for ``config.rtpengine.control``, its host names resolved."""
        ng = self.core.media_ng
        if ng is None:
            return
        await self.ng.ensure([host for host, _ in ng.controls])

        def resolved(host: str, ip: str) -> None:
            ng.resolved(host, ip, self.loop.time())

        await self.ng.ensure(await resolve_names(ng.controls, resolved))
        ng.probe(self.loop.time())  # which relays answer, before a call needs one
        self.flush()

    def _relays_up(self) -> float:
        ng = self.core.media_ng
        return 0.0 if ng is None else float(ng.relays_up)

    # -- output ----------------------------------------------------------------------------

    def send(self, flow: Flow, data: bytes) -> None:
        """One message out, counted (the pump sends UDP itself)."""
        self.pump.send(flow, data)

    def send_stream(self, flow: Flow, data: bytes) -> None:
        """A message out on TCP or TLS: the flow's connection, or one found or opened."""
        conn = self.conns.get(flow.conn) if flow.conn else None
        if conn is None or conn.closed:
            if flow.conn:
                # the connection this flow named has closed: to where the peer listens,
                # never to the closed connection's ephemeral port (RFC 3261 §18)
                flow = reroute(flow, data)
            conn = self.conn_by_addr.get((flow.transport, flow.host, flow.port))
            if conn is not None and flow.transport == "tls" and not self._may_carry(conn, flow):
                conn = None  # a connection found by address, but not the trunk's peer
        if conn is None or conn.closed:
            conn = self.connect(flow)
        conn.send(data)

    def _may_carry(self, conn: StreamConnection, flow: Flow) -> bool:
        """May a TLS connection found by ``flow``'s address carry it (:func:`may_carry`)?"""
        expected = self.tls_name_for(flow.local, flow.host, flow.port)
        return may_carry(expected, flow.local, conn.index, conn.expect_name, conn.names)

    # -- stream connections ----------------------------------------------------------------

    def new_conn_id(self) -> int:
        self._next_conn += 1
        return self._next_conn

    def register(self, conn: StreamConnection) -> None:
        self.conns[conn.id] = conn
        self.conn_by_addr[(conn.transport, conn.host, conn.port)] = conn

    def tls_name_failed(self) -> None:
        self.metrics.tls_name_failures.inc()

    def connection_up(self, conn: StreamConnection) -> None:
        """``conn`` is open (a TLS one with its certificate checked): the core learns it
        (an accepted one is registered now, one we opened was when we opened it)."""
        if conn.id not in self.conns:
            self.register(conn)
        self.core.connection_up(conn.id, conn.names)

    def unregister(self, conn: StreamConnection) -> None:
        """``conn`` is closed or was never set up: forgotten, and its slot let go."""
        self.conns.pop(conn.id, None)
        self.core.connection_down(conn.id)
        key = (conn.transport, conn.host, conn.port)
        if self.conn_by_addr.get(key) is conn:
            del self.conn_by_addr[key]
        if conn.owes_head:
            conn.owes_head = False
            self.heads.stop(conn.id)
        if conn.counted:
            conn.counted = False
            self.limits.closed(conn.source)

    def connect(self, flow: Flow) -> StreamConnection:
        conn = StreamConnection(self, flow.transport, flow.local, flow.host, flow.port)
        conn.counted = True  # counted in the total, never refused (a call's target)
        self.limits.opened()
        self.register(conn)
        conn.start_connect()
        return conn

    def framing_error(self) -> None:
        """A stream broke framing and was closed: counted as a parse error."""
        self.metrics.parse_errors.inc()

    def admit_connection(self, index: int, host: str) -> bool:
        """Take a connection accepted on listen entry ``index`` from ``host``, or refuse
        it (then it is closed at once), counted and said at most once per
        :data:`LIMIT_LOG_S`. A source that matches a trunk may use every slot."""
        try:
            known = self.core.trunk_of_source(index, host) is not None
        except ValueError:
            known = False
        reason = self.limits.admit(host, known)
        if reason is None:
            return True
        self.metrics.inc(self.metrics.rejected, reason)
        n = self._refusal_log.event(self.loop.time())
        if n:
            log.warning(
                "TCP/TLS connection limit: %d connections refused (%s; %d open, at most %d, "
                "%d per source)",
                n,
                reason,
                self.limits.open,
                self.limits.cap,
                self.limits.per_source,
            )
        return False

    def close_late_heads(self) -> int:
        """Close the connections that owe a message head longer than
        ``sip.tcp_header_timeout`` (a header trickled, or nothing sent since the accept)."""
        now = self.loop.time()
        closed = 0
        for conn_id in self.heads.expired(now, self.config.sip.tcp_header_timeout):
            conn = self.conns.get(conn_id)
            if conn is None:
                continue
            conn.owes_head = False
            if conn.closed:
                continue
            conn.close()
            closed += 1
            self.metrics.inc(self.metrics.rejected, HEADER_TIMEOUT)
            n = self._timeout_log.event(now)
            if n:
                log.info(
                    "%d TCP/TLS connections closed: no whole message head within %gs",
                    n,
                    self.config.sip.tcp_header_timeout,
                )
        return closed

    def apply_limits(self) -> None:
        """Size the connection limits to the configuration and the descriptors: the soft
        ``RLIMIT_NOFILE`` is raised towards what the limits need, as far as the hard
        limit allows, with a warning where it stays short (fewer connections then)."""
        limits = self.config.limits
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        plan = descriptor_plan(soft, hard, limits.tcp_max_connections)
        if plan.soft != soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (plan.soft, hard))
            except (ValueError, OSError) as exc:
                log.warning("cannot raise the descriptor limit to %d: %s", plan.soft, exc)
                plan = descriptor_plan(soft, soft, limits.tcp_max_connections)
            else:
                log.info("descriptor limit (RLIMIT_NOFILE) raised from %d to %d", soft, plan.soft)
        if plan.short:
            log.warning(
                "descriptor limit (RLIMIT_NOFILE) %d is below the %d that "
                "limits.tcp_max_connections (%d) and a reserve need: at most %d TCP/TLS "
                "connections",
                plan.soft,
                plan.wanted,
                limits.tcp_max_connections,
                plan.cap,
            )
        self.limits.configure(plan.cap, limits.tcp_max_per_source)

    def close_idle(self) -> int:
        """Close TCP/TLS connections idle for ``tcp_idle_timeout`` that no call uses."""
        limit = self.config.sip.tcp_idle_timeout
        now = self.loop.time()
        idle = [c for c in self.conns.values() if now - c.last_active > limit]
        if not idle:
            return 0
        in_use = self.core.streams_in_use()
        closed = 0
        for conn in idle:
            if (conn.transport, conn.host, conn.port) not in in_use:
                conn.close()
                closed += 1
        return closed

    async def sweep(self) -> None:
        """Housekeeping every few seconds: idle stream connections."""
        while True:
            await asyncio.sleep(min(10.0, max(0.5, self.config.sip.tcp_idle_timeout / 4)))
            try:
                self.close_idle()
            except Exception:
                log.exception("internal error in the connection sweep")

    async def head_sweep(self) -> None:
        """Close late message heads, looked for a few times per ``tcp_header_timeout``
        (so a connection is closed within a fifth of it, at most 1 s, after its deadline)."""
        while True:
            await asyncio.sleep(min(1.0, max(0.05, self.config.sip.tcp_header_timeout / 5)))
            if not self.heads:
                continue
            try:
                self.close_late_heads()
            except Exception:
                log.exception("internal error closing late message heads")

    async def lag_probe(self, interval: float = 0.05) -> None:
        """Measure how late the loop wakes a sleeper: the longest pause, for the metrics."""
        loop = self.loop
        worst = 0.0
        core = self.core
        guard = GcGuard(
            self.metrics, lambda: core.calls + len(core.layer.client) + len(core.layer.server)
        )
        n = 0
        pump = self.pump
        fed = pump.fed
        queue_error = False
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            end = loop.time()
            lag = max(0.0, end - start - interval)
            pump.batching = batch_sends(pump.fed - fed, end - start)
            fed = pump.fed
            try:
                self.read_queues()
            except Exception:  # the probe must go on measuring; said once, not 20 times a second
                (log.debug if queue_error else log.exception)(
                    "internal error reading the receive queues"
                )
                queue_error = True
            n += 1
            if n % 20 == 0:
                # a collection the guard runs is a pause too: the probe does not sleep then
                lag = max(lag, guard.check())
            self.metrics.loop_lag.observe(lag)
            if lag > worst:
                worst = lag
                self.metrics.loop_lag_max.set(worst)

    def receive_memory(self) -> tuple[int, int | None]:
        """The memory the UDP receive queues hold, in bytes, and the smallest receive
        buffer among them (None where the kernel does not tell)."""
        queued = 0
        smallest: int | None = None
        for endpoint in self.udp.values():
            mem = endpoint.receive_memory()
            if mem is not None:
                queued += mem[0]
                smallest = mem[1] if smallest is None else min(smallest, mem[1])
        return queued, smallest

    def overload_threshold(self, smallest_buffer: int | None) -> int:
        """``limits.overload_queue_kb`` in bytes, at most a quarter of the smallest receive
        buffer: a queue never holds more than its buffer (a host whose
        ``net.core.rmem_max`` caps SO_RCVBUF), and shedding must start well before the
        kernel drops."""
        threshold = self.config.limits.overload_queue_kb * 1024
        if threshold and smallest_buffer:
            threshold = min(threshold, smallest_buffer // 4)
        return threshold

    def read_queues(self) -> None:
        """One reading of the UDP receive queues, for load shedding and the metrics."""
        queued, smallest = self.receive_memory()
        shedder = self.core.shedder
        shedder.update(queued, self.overload_threshold(smallest))
        self.metrics.receive_queue.set(queued)
        self.metrics.admitted_ratio.set(shedder.admitted)
        line = self.overload_log.reading(
            self.loop.time(), queued, shedder.shed, shedder.shedding, shedder.admitted
        )
        if line is not None:
            log.warning("%s", line)

    def tls_name_for(self, index: int, host: str, port: int) -> str | None:
        """The ``tls_name`` a TLS connection from listen entry ``index`` to ``host:port``
        must find in the server's certificate: that of the trunk the core routed there,
        else (an in-dialog peer) that of the trunk whose sources hold ``host``; or None."""
        name = self.core.expected_tls_name(index, host, port)
        if name is not None:
            return name
        try:
            trunk = self.core.trunk_of_source(index, host)  # kept by the core, per source
        except ValueError:
            return None
        return expected_name(None, trunk)

    def client_context(self, index: int, by_name: bool) -> ssl.SSLContext:
        """The TLS context of connections opened from listen entry ``index``: the server's
        certificate verified against the entry's ``ca`` (or the system's CAs), and its
        host name checked by the TLS library, or, ``by_name``, by the caller against a
        trunk's ``tls_name``; the entry's own certificate presented when asked for. Made
        once per entry and kind."""
        key = (index, by_name)
        ctx = self._client_contexts.get(key)
        if ctx is None:
            listen = self.config.listen[index]
            ctx = ssl.create_default_context(cafile=listen.ca)
            if listen.cert is not None and listen.key is not None:
                # our certificate, for a server that asks for one (mutual TLS)
                ctx.load_cert_chain(listen.cert, listen.key)
            if by_name:
                ctx.check_hostname = False
            self._client_contexts[key] = ctx
        return ctx

    def connection_failed(self, conn: StreamConnection) -> None:
        """A connection we opened could not be made: fail its client transactions now,
        those whose flow names it and those sent there because their own connection had
        closed (:func:`request_flow`)."""
        now = self.loop.time()
        for tx in list(self.core.layer.client.values()):
            f = tx.flow
            if fails_with(
                f, tx.request, conn.transport, conn.host, conn.port, f.conn in self.conns
            ):
                tx.fail(now)
        self.flush()

    def export_stats(self) -> None:
        """Move the core's plain counters into Prometheus (read at scrape time)."""
        core = self.core
        m = self.metrics
        for direction, counts in (("in", core.stats_in), ("out", core.stats_out)):
            seen = self._exported.setdefault(direction, {})
            for kind, n in list(counts.items()):
                delta = n - seen.get(kind, 0)
                if delta:
                    label = kind if kind in KNOWN_KINDS else "other"
                    m.sip_messages.labels(direction, label).inc(delta)
                    seen[kind] = n
        delta = core.layer.retransmissions - self._exported_rtx
        if delta:
            m.retransmissions.inc(delta)
            self._exported_rtx = core.layer.retransmissions
        delta = core.layer.withheld - self._exported_withheld
        if delta:
            m.refusals_withheld.inc(delta)
            self._exported_withheld = core.layer.withheld
        ng = core.media_ng
        if ng is not None:
            for key, n in list(ng.requests.items()):
                delta = n - self._exported_ng.get(key, 0)
                if delta:
                    m.rtpengine_requests.labels(*key).inc(delta)
                    self._exported_ng[key] = n
            m.rtpengine_retransmissions.inc(ng.retransmissions - self._exported_ng_rtx)
            self._exported_ng_rtx = ng.retransmissions
            m.rtpengine_timeouts.inc(ng.timeouts - self._exported_ng_timeouts)
            self._exported_ng_timeouts = ng.timeouts
            m.rtpengine_stray.inc(ng.stray - self._exported_ng_stray)
            self._exported_ng_stray = ng.stray

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.apply_limits()  # before the first socket: the descriptors it may use
        for i, listen in enumerate(self.config.listen):
            if listen.transport == "udp":
                self.udp[i] = await UdpEndpoint.create(self, i, listen.address, listen.port)
            elif listen.transport == "tcp":
                self.tcp[i] = await TcpListener.create(self, i, listen)
            else:
                self.tcp[i] = await TcpListener.create(self, i, listen, tls=True)
                for by_name in (False, True):  # a CA file that cannot be read fails here
                    self.client_context(i, by_name)
            log.info("listening on %s %s:%d", listen.transport, listen.address, listen.port)
        await self.media_start(self.config)
        configured = self.config.limits.overload_queue_kb
        _, smallest = self.receive_memory()
        if configured and smallest and self.overload_threshold(smallest) < configured * 1024:
            log.warning(
                "limits.overload_queue_kb: %d KiB is more than a quarter of the UDP receive "
                "buffer (%d KiB as the kernel counts it, twice what net.core.rmem_max "
                "allows): new calls are shed from %d KiB",
                configured,
                smallest // 1024,
                self.overload_threshold(smallest) // 1024,
            )

    def close(self) -> None:
        self.pump.close()
        for ep in self.udp.values():
            ep.close()
        for lst in self.tcp.values():
            lst.close()
        for conn in list(self.conns.values()):
            conn.close()
        self.ng.close()


def loop_create(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(coro)


def restart_needed(old: Config, new: Config) -> set[str]:
    """The sections of ``new`` that a reload cannot apply (they need a restart)."""
    out = set()
    if old.listen != new.listen:
        out.add("listen")
    if old.metrics != new.metrics:
        out.add("metrics")
    if old.cdr != new.cdr:
        out.add("cdr")
    return out


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


async def serve(config_path: str, config: Config) -> int:
    """Run until SIGTERM or SIGINT, drain, stop: 0, or 1 if CDRs were still waiting to be
    stored after 10 s (the writer logs how many). Whatever ends the run, a stop or a
    socket that cannot be opened (OSError, raised on), the records submitted are stored
    before this returns: ``sipguard run`` then ends the process at once (sipguard.cli)."""
    metrics = Metrics()
    # the process's own CPU seconds, RSS, open files and start time (process_*), read from
    # /proc/self at each scrape: what a load test in a container reads (docker/sipp/)
    ProcessCollector(registry=metrics.registry)
    writer = CdrWriter(config.cdr, metrics)
    writer.start()
    try:
        await _serve(config_path, config, metrics, writer)
    finally:
        stored = await writer.aclose(10.0)
    if not stored:
        return 1
    log.info("stopped")
    return 0


async def _serve(config_path: str, config: Config, metrics: Metrics, writer: CdrWriter) -> None:
    driver = Driver(config, metrics, writer)
    await driver.start()
    resolver = TargetResolver.from_config(config.dns)

    def set_targets(resolved: dict[str, list[tuple[str, str, int]]]) -> None:
        driver.core.set_targets(resolved)

    def start_dns(cfg: Config) -> asyncio.Task[None]:
        set_targets(resolver.snapshot(cfg))
        return asyncio.get_running_loop().create_task(resolver.run(cfg, set_targets))

    dns_task = start_dns(config)
    sweep_task = loop_create(driver.sweep())
    head_task = loop_create(driver.head_sweep())
    lag_task = loop_create(driver.lag_probe())
    httpd: MetricsServer | None = None
    if config.metrics is not None:

        def metrics_body() -> bytes:
            driver.export_stats()
            metrics.ready.set(0 if driver.core.draining else 1)
            return generate_latest(metrics.registry)

        httpd = MetricsServer(metrics_body, lambda: not driver.core.draining)
        await httpd.start(config.metrics.address, config.metrics.port)
    loop = asyncio.get_running_loop()

    def reload() -> None:
        try:
            new = load_config(config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            metrics.config_reloads.labels("error").inc()
            return
        restart_only = restart_needed(driver.config, new)
        if "listen" in restart_only:
            # the sockets are opened once; new indices would point calls at the wrong ones
            log.error(
                "reload refused, keeping the running configuration: %s:0: listen: "
                "the listening sockets change only with a restart",
                config_path,
            )
            metrics.config_reloads.labels("error").inc()
            return
        nonlocal dns_task
        driver.config = new
        driver.core.reload(new)
        loop_create(driver.media_start(new))  # sockets for new families, names resolved
        driver.apply_limits()
        dns_task.cancel()
        resolver.reconfigure(new.dns)
        dns_task = start_dns(new)
        logging.getLogger().setLevel(getattr(logging, new.log_level.upper(), logging.INFO))
        metrics.config_reloads.labels("ok").inc()
        log.info("configuration reloaded from %s", config_path)
        for section in sorted(restart_only):
            log.warning("%s: %s: changes take effect at the next restart", config_path, section)

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, driver.stopping.set)
    loop.add_signal_handler(signal.SIGINT, driver.stopping.set)
    tune_gc()
    log.info("sipguard running (pid %d, %s)", os.getpid(), core_build())
    await driver.stopping.wait()

    # graceful stop: no new calls, OPTIONS answered 503, calls in progress may end
    log.info("stopping: draining %d calls for up to %.0fs", driver.core.calls, config.drain_seconds)
    driver.core.drain()
    deadline = loop.time() + driver.config.drain_seconds
    while driver.core.calls > 0 and loop.time() < deadline:
        await asyncio.sleep(0.1)
    if driver.core.calls:
        driver.core.shutdown(loop.time())
        driver.flush()
        await asyncio.sleep(0.2)  # let the BYEs go out
    dns_task.cancel()
    sweep_task.cancel()
    head_task.cancel()
    lag_task.cancel()
    driver.flush()  # what the last messages made (a flush may still be queued)
    driver.close()
    if httpd is not None:
        await httpd.close()


def run(config: Config, config_path: str = "config/sipguard.yaml") -> int:
    _setup_logging(config.log_level)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        log.warning("uvloop not available; using the default event loop")
    try:
        return asyncio.run(serve(config_path, config))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
