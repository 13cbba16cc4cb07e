"""Load shedding (``sipguard/b2bua/overload.py``): new calls refused while the UDP receive
queue grows, emergency calls and calls in progress never (SPEC §1.4, §8)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sipguard.b2bua.overload import DECREASE, INCREASE, MIN_ADMITTED, Shedder
from sipguard.config.loader import ConfigError
from sipguard.metrics import Metrics
from sipguard.net import server
from sipguard.net.throttle import OVERLOAD_LOG_S
from sipguard.net.transport import UdpEndpoint
from testkit.callsim import Wire, default_config, establish, in_dialog, invite, requests, responses
from testkit.metrics import sample

THRESHOLD = 512 * 1024


def admitted_of(shedder: Shedder, calls: int) -> int:
    return sum(shedder.admit() for _ in range(calls))


# -- the decision ------------------------------------------------------------------------------


def test_a_short_queue_admits_every_call() -> None:
    s = Shedder()
    for queued in (0, 1000, THRESHOLD):  # at the threshold: not above it
        s.update(queued, THRESHOLD)
        assert not s.shedding
    assert s.admitted == 1.0
    assert admitted_of(s, 1000) == 1000


def test_a_queue_growing_above_the_threshold_cuts_the_fraction_at_each_reading() -> None:
    s = Shedder()
    s.update(THRESHOLD + 1, THRESHOLD)  # one reading above: maybe a pause caught up on
    assert not s.shedding and admitted_of(s, 100) == 100
    s.update(THRESHOLD + 2, THRESHOLD)  # still growing: an overload
    assert s.shedding and s.admitted == pytest.approx(DECREASE)
    # spread evenly, not drawn at random; only untrusted calls were offered: they get a
    assert admitted_of(s, 100) == 75
    assert s.shed == 25
    s.update(THRESHOLD + 3, THRESHOLD)  # growing: cut again
    assert s.admitted == pytest.approx(DECREASE**2)
    s.update(THRESHOLD + 2, THRESHOLD)  # shrinking: holds; nothing offered: an even mix
    # an untrusted trunk's calls first: 2 * a - 1 of them, a trusted one's 2 * a (all)
    assert admitted_of(s, 100) == round(100 * (2 * DECREASE**2 - 1))
    assert sum(s.admit(trusted=True) for _ in range(100)) == 100
    s.update(2 * THRESHOLD, THRESHOLD)  # still growing: cut again
    assert s.admitted == pytest.approx(DECREASE**3)
    for _ in range(20):
        s.update(8 * THRESHOLD, THRESHOLD)  # as long as it does not shrink
    assert s.admitted == MIN_ADMITTED  # a flood: all but one call in a hundred refused
    assert admitted_of(s, 1000) == 10
    assert sum(s.admit(trusted=True) for _ in range(1000)) == 20  # 2a: the trusted too


def test_the_fraction_is_shared_by_the_mix_offered_the_trusted_trunks_first() -> None:
    """``admitted`` is of every new call offered: the trusted trunks' calls get all they
    need of it, the untrusted ones the rest (SPEC §8: a customer's flood is shed before
    the PBX's calls); where only one kind is offered it gets ``admitted`` itself."""
    s = Shedder()
    s.update(2 * THRESHOLD + 1, THRESHOLD)  # a = 0.75
    s.update(2 * THRESHOLD + 2, THRESHOLD)  # growing: a = 0.5625; nothing offered: even
    a = DECREASE**2
    for _ in range(100):
        s.admit(trusted=True)
    for _ in range(900):
        s.admit()
    s.update(2 * THRESHOLD, THRESHOLD)  # shrinking: holds; the mix was 1 : 9
    assert s.admitted == pytest.approx(a)
    # 1,000 offered, a of them admitted: the 100 trusted first, the rest of the others
    assert sum(s.admit(trusted=True) for _ in range(100)) == 100
    assert admitted_of(s, 900) == int(a * 1000 - 100)
    s.update(2 * THRESHOLD - 1, THRESHOLD)  # holds
    for _ in range(1000):  # then a flood of trusted calls alone
        s.admit(trusted=True)
    s.update(2 * THRESHOLD - 2, THRESHOLD)  # holds
    assert sum(s.admit(trusted=True) for _ in range(1000)) == int(a * 1000)  # they get a
    # an untrusted call that comes now counts as one more: what is left is almost nothing
    assert s.untrusted == MIN_ADMITTED


def test_past_twice_the_threshold_the_first_reading_cuts() -> None:
    s = Shedder()
    s.update(2 * THRESHOLD + 1, THRESHOLD)
    assert s.shedding and s.admitted == pytest.approx(DECREASE)


def test_a_pause_caught_up_on_refuses_nothing() -> None:
    """A queue just above the threshold once, then shrinking: the host paused, sipguard
    catches up (slowly, near its capacity), and no call is refused meanwhile."""
    s = Shedder()
    for queued in (0, THRESHOLD + THRESHOLD // 2, THRESHOLD + 1, THRESHOLD // 2, 0):
        s.update(queued, THRESHOLD)
        assert not s.shedding


def test_a_queue_above_the_threshold_but_shrinking_is_the_last_cut_at_work() -> None:
    s = Shedder()
    s.update(4 * THRESHOLD, THRESHOLD)
    for queued in (3 * THRESHOLD, 2 * THRESHOLD, THRESHOLD + 1):  # draining: no new cut
        s.update(queued, THRESHOLD)
        assert s.admitted == pytest.approx(DECREASE)
    s.update(THRESHOLD + 2, THRESHOLD)  # growing again, still above: the cut was too small
    assert s.admitted == pytest.approx(DECREASE**2)


def test_the_fraction_holds_until_the_queue_is_under_a_quarter_then_grows_back() -> None:
    s = Shedder()
    s.update(2 * THRESHOLD + 1, THRESHOLD)
    s.update(THRESHOLD // 2, THRESHOLD)  # between a quarter and the threshold: hold
    assert s.admitted == pytest.approx(DECREASE)
    s.update(THRESHOLD // 4, THRESHOLD)
    assert s.admitted == pytest.approx(DECREASE + INCREASE)
    for _ in range(10):
        s.update(0, THRESHOLD)
    assert s.admitted == 1.0 and not s.shedding
    assert admitted_of(s, 100) == 100


def test_a_threshold_of_zero_turns_shedding_off_at_once() -> None:
    s = Shedder()
    for _ in range(5):
        s.update(10 * THRESHOLD, THRESHOLD)
    s.update(10 * THRESHOLD, 0)  # a reload set overload_queue_kb: 0
    assert not s.shedding and s.admitted == 1.0 and admitted_of(s, 10) == 10


# -- in the core ------------------------------------------------------------------------------


def shedding_wire() -> Wire:
    w = Wire(default_config(), metrics=Metrics())
    for _ in range(40):  # a long overload: about one call in 100,000 admitted
        w.core.shedder.update(10 * THRESHOLD, THRESHOLD)
    assert w.core.shedder.shedding
    return w


def test_while_shedding_a_new_call_gets_503_without_retry_after_and_a_limit_cdr() -> None:
    w = shedding_wire()
    w.from_caller(invite(1))
    (final,) = [r for r in responses(w.take_caller()) if r.status >= 200]
    assert final.status == 503 and not final.has("retry-after")
    assert not requests(w.take_callee(), "INVITE")
    (end,) = [r for r in w.core.cdr_out if r.kind == "end"]
    assert end.end_reason == "limit" and end.status == 503
    assert sample(w.metrics, "sipguard_rejected_total", reason="overload") == 1


def test_while_shedding_an_emergency_call_goes_through() -> None:
    w = shedding_wire()
    w.from_caller(invite(1, user="112"))
    assert len(requests(w.take_callee(), "INVITE")) == 1
    assert not [r for r in responses(w.take_caller()) if r.status >= 200]


def test_shedding_never_touches_a_call_in_progress() -> None:
    w = Wire(default_config())
    call = establish(w, 1)  # answered before the overload
    for _ in range(40):
        w.core.shedder.update(10 * THRESHOLD, THRESHOLD)
    w.from_caller(in_dialog("BYE", call.a_ok, 2, 1, "z9hG4bK-1-bye"))
    assert len(requests(w.take_callee(), "BYE")) == 1  # relayed, not refused
    assert [r.end_reason for r in w.core.cdr_out if r.kind == "end"] == ["caller_bye"]


def test_overload_queue_kb_is_read_and_checked() -> None:
    assert default_config().limits.overload_queue_kb == 2048
    assert default_config("limits: {overload_queue_kb: 0}\n").limits.overload_queue_kb == 0
    with pytest.raises(ConfigError, match=r"<callsim>:\d+: limits\.overload_queue_kb: "):
        default_config("limits: {overload_queue_kb: -1}\n")


# -- the reading, on a real socket ------------------------------------------------------------


class _Fed:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def feed(self, data: bytes, flow: object) -> None:
        self.data.append(data)


async def test_the_endpoint_reads_what_waits_in_its_receive_queue() -> None:
    fed = _Fed()
    endpoint = await UdpEndpoint.create(fed, 0, "127.0.0.1", 0)  # type: ignore[arg-type]
    assert endpoint.sock is not None
    addr = endpoint.sock.getsockname()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        mem = endpoint.receive_memory()
        assert mem is not None and mem[0] == 0 and mem[1] > 0
        for _ in range(10):  # sent while the loop cannot read them: they wait
            client.sendto(b"x" * 600, addr)
        mem = endpoint.receive_memory()
        assert mem is not None and mem[0] >= 10 * 600  # loopback delivers within sendto
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(fed.data) == 10:
                break
        assert len(fed.data) == 10
        assert endpoint.receive_memory() == (0, mem[1])  # read: the queue is empty again
    finally:
        client.close()
        endpoint.close()
    assert endpoint.receive_memory() is None  # closed: nothing to read, no error


async def test_the_driver_sheds_from_its_readings_and_exports_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = default_config("limits: {overload_queue_kb: 1}\n")
    metrics = Metrics()
    driver = server.Driver(config, metrics, None)
    driver.udp[0] = await UdpEndpoint.create(driver, 0, "127.0.0.1", 0)
    sock = driver.udp[0].sock
    assert sock is not None
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(4):  # over 1 KiB waiting
            client.sendto(b"\r\n\r\n" + b"x" * 600, sock.getsockname())
        driver.read_queues()
        assert driver.core.shedder.shedding
        assert sample(metrics, "sipguard_receive_queue_bytes") >= 4 * 600
        assert sample(metrics, "sipguard_overload_admitted_ratio") == pytest.approx(DECREASE)
        assert not caplog.records  # nothing shed yet: nothing to say
        shed = [driver.core.shedder.admit(trusted=True) for _ in range(6)]
        shed += [driver.core.shedder.admit() for _ in range(4)]  # untrusted: half of them
        assert shed.count(False) == 2
        driver.read_queues()
        (line,) = [r.getMessage() for r in caplog.records]
        assert line.startswith("overload: 2 new calls shed (2 since start);"), line
        driver.core.shedder.admit()
        driver.read_queues()  # within OVERLOAD_LOG_S of the last line: quiet
        assert len(caplog.records) == 1
        for _ in range(100):  # the loop reads them (and drops them: not SIP)
            await asyncio.sleep(0.01)
            if driver.receive_memory()[0] == 0:
                break
        for _ in range(30):  # short again: back to every call, a twentieth per reading
            driver.read_queues()
        assert not driver.core.shedder.shedding
        assert sample(metrics, "sipguard_overload_admitted_ratio") == 1.0
        assert sample(metrics, "sipguard_receive_queue_bytes") == 0
        driver.overload_log.last -= OVERLOAD_LOG_S  # the next line is due
        driver.read_queues()
        assert caplog.records[-1].getMessage().startswith("overload:")  # the one left over
        driver.overload_log.last -= OVERLOAD_LOG_S
        driver.read_queues()
        assert caplog.records[-1].getMessage() == "overload over: every new call admitted again"
        driver.overload_log.last -= OVERLOAD_LOG_S
        driver.read_queues()  # said once
        assert len(caplog.records) == 3
    finally:
        client.close()
        driver.close()


async def test_a_reload_to_zero_stops_shedding_and_the_buffer_caps_the_threshold() -> None:
    driver = server.Driver(default_config(), Metrics(), None)
    driver.udp[0] = await UdpEndpoint.create(driver, 0, "127.0.0.1", 0)
    sock = driver.udp[0].sock
    assert sock is not None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # a small rmem_max
    buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    try:
        # 2 MiB configured, but the queue could never hold that much: a quarter of it
        assert driver.overload_threshold(buffer) == buffer // 4 < 2048 * 1024
        assert driver.overload_threshold(None) == 2048 * 1024  # unknown buffer: as given
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(40):  # over a quarter of that buffer
            client.sendto(b"x" * 600, sock.getsockname())
        client.close()
        driver.read_queues()
        driver.read_queues()  # above the threshold twice, not shrinking: an overload
        assert driver.core.shedder.shedding
        driver.config = default_config("limits: {overload_queue_kb: 0}\n")  # a reload
        driver.read_queues()
        assert not driver.core.shedder.shedding and driver.core.shedder.admit()
    finally:
        driver.close()
