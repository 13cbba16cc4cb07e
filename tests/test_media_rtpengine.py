"""The ng client in the real driver against Debian's rtpengine on loopback.

The driver (``sipguard.net.server.Driver``) is built from a configuration with
``rtpengine.control``; its ng socket sends what the core's client asks for and feeds the
replies back; one ``call_at`` covers the SIP timers and the ng client's. The commands
and flags are those the call flow uses: ``offer``/``answer`` with
``replace: [origin, session-connection]`` and ``ICE: remove``, ``query``, ``delete``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sipguard.metrics import Metrics
from sipguard.net import server
from testkit.callsim import default_config
from testkit.metrics import sample
from testkit.rtpengine import (
    Rtpengine,
    dead_relay,
    rtpengine_factory,  # noqa: F401 - fixture
)
from testkit.sipp import free_port

pytestmark = pytest.mark.rtpengine

FLAGS: dict[str, Any] = {"replace": ["origin", "session-connection"], "ICE": "remove"}
CALLER_SDP = (
    "v=0\r\no=caller 7 7 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\n"
    "m=audio 16000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\n"
    "a=candidate:1 1 UDP 2130706431 127.0.0.3 16000 typ host\r\n"
    "a=candidate:2 1 UDP 1694498815 192.0.2.77 16000 typ srflx raddr 127.0.0.3 rport 16000\r\n"
)
CALLEE_SDP = (
    "v=0\r\no=callee 9 9 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
    "m=audio 17000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=candidate:1 1 UDP 2130706431 127.0.0.2 17000 typ host\r\n"
)


def driver_for(controls: list[str]) -> server.Driver:
    quoted = ", ".join(f"'{c}'" for c in controls)
    config = default_config(f"rtpengine: {{control: [{quoted}]}}\n")
    return server.Driver(config, Metrics(), None)


@pytest.fixture
async def close_after() -> AsyncIterator[list[server.Driver]]:
    made: list[server.Driver] = []
    yield made
    for d in made:
        d.close()


async def ask(
    driver: server.Driver, command: dict[str, Any], limit: float = 10.0
) -> tuple[dict[str, object] | None, float]:
    """One request through the core's client; the driver's own socket and timer do the rest."""
    ng = driver.core.media_ng
    assert ng is not None
    loop = asyncio.get_running_loop()
    got: list[tuple[dict[str, object] | None, float]] = []
    assert ng.request(command, loop.time(), lambda r, now: got.append((r, now)))
    driver.flush()  # sends the datagram and arms the one timer
    end = loop.time() + limit
    while not got and loop.time() < end:
        await asyncio.sleep(0.01)
    assert got, f"no done() for {command['command']} within {limit} s"
    return got[0]


async def test_a_call_anchored_through_the_driver(
    rtpengine_factory: Callable[..., Rtpengine],  # noqa: F811
    close_after: list[server.Driver],
) -> None:
    rtp = rtpengine_factory()
    driver = driver_for([rtp.control])
    close_after.append(driver)
    await driver.media_start(driver.config)
    ids = {"call-id": "drv-1", "from-tag": "caller-tag"}
    offer, _ = await ask(driver, {"command": "offer", **ids, "sdp": CALLER_SDP, **FLAGS})
    assert offer is not None and offer["result"] == "ok"
    sdp = str(offer["sdp"])
    # the callee is told the relay's address, never the caller's (nor its ICE candidates)
    assert f"o=caller 7 7 IN IP4 {rtp.ip}\r\n" in sdp
    assert f"c=IN IP4 {rtp.ip}\r\n" in sdp
    for leak in ("127.0.0.3", "192.0.2.77", "candidate", "ice-ufrag", "ice-pwd"):
        assert leak not in sdp, leak
    answer, _ = await ask(
        driver, {"command": "answer", **ids, "to-tag": "callee-tag", "sdp": CALLEE_SDP, **FLAGS}
    )
    assert answer is not None and answer["result"] == "ok"
    back = str(answer["sdp"])
    assert f"c=IN IP4 {rtp.ip}\r\n" in back and "127.0.0.2" not in back
    assert "candidate" not in back
    query, _ = await ask(driver, {"command": "query", "call-id": "drv-1"})
    assert query is not None and query["result"] == "ok"
    assert set(query["tags"]) == {"caller-tag", "callee-tag"}  # type: ignore[call-overload]
    assert rtp.list_calls() == ["drv-1"]
    delete, _ = await ask(driver, {"command": "delete", **ids})
    assert delete is not None and delete["result"] == "ok"
    assert rtp.list_calls() == []
    # an error reply is handed over as it is: the caller reads result and error-reason
    again, _ = await ask(driver, {"command": "query", "call-id": "drv-1"})
    assert again is not None and again["result"] == "error"
    assert again["error-reason"] == "Unknown call-id"
    driver.export_stats()
    m = driver.metrics
    assert sample(m, "sipguard_rtpengine_requests_total", command="offer", result="ok") == 1
    assert sample(m, "sipguard_rtpengine_requests_total", command="delete", result="ok") == 1
    assert sample(m, "sipguard_rtpengine_requests_total", command="query", result="error") == 1
    assert sample(m, "sipguard_rtpengine_relays_up") == 1
    assert sample(m, "sipguard_rtpengine_retransmissions_total") == 0
    # a datagram with no pending cookie (a late reply, or someone else's): counted only
    driver.media_feed(b"0123456789abcdef0123 d6:result2:oke", rtp.address)
    driver.export_stats()
    assert sample(m, "sipguard_rtpengine_stray_total") == 1


async def test_first_relay_dead_second_used_first_pinged_back(
    rtpengine_factory: Callable[..., Rtpengine],  # noqa: F811
    close_after: list[server.Driver],
) -> None:
    second = rtpengine_factory()
    with dead_relay() as dead:
        driver = driver_for([f"udp:{dead[0]}:{dead[1]}", second.control])
        close_after.append(driver)
        await driver.media_start(driver.config)
        loop = asyncio.get_running_loop()
        start = loop.time()
        offer, at = await ask(
            driver, {"command": "offer", "call-id": "f-1", "from-tag": "a", "sdp": CALLER_SDP}
        )
        assert offer is not None and offer["result"] == "ok"
        assert 1.4 <= at - start < 2.5  # three sends of 0.5 s to the dead one, then the second
        assert second.list_calls() == ["f-1"]
        ng = driver.core.media_ng
        assert ng is not None and ng.relays_up == 1
        # the next request goes straight to the second
        await ask(driver, {"command": "query", "call-id": "f-1"})
        driver.export_stats()
        assert sample(driver.metrics, "sipguard_rtpengine_retransmissions_total") == 2
        assert sample(driver.metrics, "sipguard_rtpengine_timeouts_total") == 1
        assert sample(driver.metrics, "sipguard_rtpengine_relays_up") == 1
    # the first relay comes back on its address; the client's pings (every 2 s) find it
    first = rtpengine_factory(ng_port=dead[1])
    end = loop.time() + 6.0
    while ng.relays_up < 2 and loop.time() < end:
        await asyncio.sleep(0.05)
    assert ng.relays_up == 2
    assert sample(driver.metrics, "sipguard_rtpengine_relays_up") == 2
    offer2, _ = await ask(
        driver, {"command": "offer", "call-id": "f-2", "from-tag": "a", "sdp": CALLER_SDP}
    )
    assert offer2 is not None and offer2["result"] == "ok"
    assert first.list_calls() == ["f-2"]
    assert second.list_calls() == ["f-1"]
    # f-1's session is on the second: its delete goes there
    deleted, _ = await ask(driver, {"command": "delete", "call-id": "f-1", "from-tag": "a"})
    assert deleted is not None and deleted["result"] == "ok"
    assert second.list_calls() == []


async def test_every_relay_dead_or_closed_done_none_after_the_bounded_time(
    close_after: list[server.Driver],
) -> None:
    closed = free_port()  # nothing listens there: the kernel answers ICMP unreachable
    with dead_relay() as one:
        driver = driver_for([f"udp:{one[0]}:{one[1]}", f"udp:127.0.0.1:{closed}"])
        close_after.append(driver)
        await driver.media_start(driver.config)
        loop = asyncio.get_running_loop()
        start = loop.time()
        reply, at = await ask(driver, {"command": "offer", "call-id": "z", "sdp": CALLER_SDP})
        assert reply is None
        assert 2.9 <= at - start < 3.6  # 2 relays x 3 tries x 0.5 s
        ng = driver.core.media_ng
        assert ng is not None and not ng.up
        assert not ng.request({"command": "offer", "call-id": "z2"}, loop.time(), print)
        driver.export_stats()
        m = driver.metrics
        assert (
            sample(m, "sipguard_rtpengine_requests_total", command="offer", result="timeout") == 1
        )
        assert (
            sample(m, "sipguard_rtpengine_requests_total", command="offer", result="refused") == 1
        )
        assert sample(m, "sipguard_rtpengine_relays_up") == 0


async def test_reload_changes_the_relays(
    rtpengine_factory: Callable[..., Rtpengine],  # noqa: F811
    close_after: list[server.Driver],
) -> None:
    one = rtpengine_factory()
    two = rtpengine_factory(ng_ip="::1")
    driver = driver_for([one.control])
    close_after.append(driver)
    await driver.media_start(driver.config)
    ng = driver.core.media_ng
    reply, _ = await ask(driver, {"command": "ping"})
    assert reply == {"result": "pong"}
    # a reload to an IPv6 control address: the same client, a socket of that family
    new = default_config(f"rtpengine: {{control: ['{two.control}']}}\n")
    driver.config = new
    driver.core.reload(new)
    await driver.media_start(new)
    assert driver.core.media_ng is ng and ng is not None
    assert ng.controls == (("::1", two.ng_port),)
    offer, _ = await ask(
        driver, {"command": "offer", "call-id": "r-1", "from-tag": "a", "sdp": CALLER_SDP}
    )
    assert offer is not None and offer["result"] == "ok"
    assert two.list_calls() == ["r-1"] and one.list_calls() == []


async def test_no_control_no_client() -> None:
    driver = server.Driver(default_config(), Metrics(), None)
    try:
        assert driver.core.media_ng is None
        await driver.media_start(driver.config)
        driver.core.media_receive(b"x d6:result2:oke", ("127.0.0.1", 1), 0.0)
        driver.export_stats()
        assert sample(driver.metrics, "sipguard_rtpengine_relays_up") == 0
    finally:
        driver.close()


async def test_a_control_host_name_is_resolved_by_the_driver(
    rtpengine_factory: Callable[..., Rtpengine],  # noqa: F811
    close_after: list[server.Driver],
) -> None:
    rtp = rtpengine_factory()
    # (localhost: from /etc/hosts, no DNS query leaves the machine)
    driver = driver_for([f"udp:localhost:{rtp.ng_port}"])
    close_after.append(driver)
    ng = driver.core.media_ng
    assert ng is not None and not ng.up  # nothing resolved yet: no relay to use
    await driver.media_start(driver.config)
    # localhost found, pinged, then alive
    loop = asyncio.get_running_loop()
    end = loop.time() + 5.0
    while not ng.up and loop.time() < end:
        await asyncio.sleep(0.02)
    assert [r.addr for r in ng.relays] == [("127.0.0.1", rtp.ng_port)]
    reply, _ = await ask(driver, {"command": "ping"})
    assert reply == {"result": "pong"}
