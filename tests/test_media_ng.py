"""The sans-IO ng client with a fake clock: loss is a datagram not delivered.

The first part drives :class:`NgClient` against in-memory relays; the last part
(``rtpengine`` mark) drives it over a real socket against Debian's rtpengine.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
from collections.abc import Callable
from typing import Any

import pytest

from sipguard.media.bencode import decode_dict, encode
from sipguard.media.ng import NgClient, earliest, ng_client, parse_control
from testkit.forking import in_child
from testkit.rtpengine import (
    Rtpengine,
    dead_relay,
    rtpengine_factory,  # noqa: F401 - fixture
)

A = ("127.0.0.1", 2223)
B = ("127.0.0.1", 2224)


class Done:
    """A ``done`` callback that records what it got."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, object] | None, float]] = []

    def __call__(self, reply: dict[str, object] | None, now: float) -> None:
        self.calls.append((reply, now))

    @property
    def reply(self) -> dict[str, object] | None:
        assert len(self.calls) == 1, self.calls
        return self.calls[0][0]


def split(data: bytes) -> tuple[bytes, dict[str, object]]:
    cookie, _, body = data.partition(b" ")
    return cookie, decode_dict(body)


def answer(data: bytes, reply: dict[str, object]) -> bytes:
    cookie, _ = split(data)
    return cookie + b" " + encode(reply)


def drain(client: NgClient) -> list[tuple[tuple[str, int], bytes]]:
    out = list(client.outbox)
    client.outbox.clear()
    return out


def serve(client: NgClient, now: float, relays: dict[tuple[str, int], bool]) -> int:
    """Deliver the outbox to the in-memory relays that are up (``relays[addr]``); each
    answers ``ping`` with ``pong`` and anything else with ``ok``. The datagrams lost."""
    lost = 0
    for addr, data in drain(client):
        if not relays.get(addr, False):
            lost += 1
            continue
        _, cmd = split(data)
        result = "pong" if cmd["command"] == "ping" else "ok"
        client.receive(answer(data, {"result": result}), addr, now)
    return lost


def test_request_reply_done_and_counted() -> None:
    client = NgClient([A])
    done = Done()
    assert client.request({"command": "offer", "call-id": "c1", "sdp": "v=0"}, 0.0, done)
    [(addr, data)] = drain(client)
    assert addr == A
    cookie, cmd = split(data)
    assert cmd == {"command": "offer", "call-id": "c1", "sdp": "v=0"}
    assert len(cookie) == 20 and int(cookie, 16) >= 0
    assert client.next_deadline() == 0.5
    client.receive(answer(data, {"result": "ok", "sdp": "v=1"}), A, 0.1)
    assert done.reply == {"result": "ok", "sdp": "v=1"}
    assert done.calls[0][1] == 0.1
    assert client.next_deadline() is None
    assert client.requests == {("offer", "ok"): 1}
    assert client.affinity == {"c1": client.relays[0]}


def test_error_reply_is_handed_over_and_counted() -> None:
    client = NgClient([A])
    done = Done()
    client.request({"command": "answer", "call-id": "c1"}, 0.0, done)
    [(_, data)] = drain(client)
    reply = {"result": "error", "error-reason": "Unknown call-id"}
    client.receive(answer(data, reply), A, 0.0)
    assert done.reply == reply
    assert client.errors == 1
    assert client.requests == {("answer", "error"): 1}


def test_cookies_are_unique_and_unpredictable() -> None:
    client = NgClient([A], max_pending=5000)
    for _ in range(2000):
        client.request({"command": "query"}, 0.0, Done())
    cookies = [split(d)[0] for _, d in drain(client)]
    assert len(set(cookies)) == 2000
    # not a counter: consecutive cookies differ in many hex digits
    assert all(
        sum(x != y for x, y in zip(a, b, strict=True)) > 8 for a, b in itertools.pairwise(cookies)
    )


def test_a_forked_child_never_sends_its_parents_next_cookies() -> None:
    """The cookies' batch read before a fork is forgotten in the child (sip/ids.py): its
    next cookies are its own, not the ones the parent is about to use."""
    client = NgClient([A], max_pending=100)

    def cookies(n: int) -> list[str]:
        for _ in range(n):
            client.request({"command": "query"}, 0.0, Done())
        return [split(d)[0].decode() for _, d in drain(client)]

    cookies(1)  # a batch is read
    child = in_child(lambda: " ".join(cookies(3))).split()
    assert len(child) == 3
    assert set(child).isdisjoint(cookies(3))


def test_reply_only_from_the_address_and_with_a_pending_cookie() -> None:
    client = NgClient([A])
    done = Done()
    client.request({"command": "query"}, 0.0, done)
    [(_, data)] = drain(client)
    client.receive(answer(data, {"result": "ok"}), ("127.0.0.9", 2223), 0.0)  # wrong host
    client.receive(answer(data, {"result": "ok"}), ("127.0.0.1", 9999), 0.0)  # wrong port
    client.receive(b"0123456789abcdef0123 d6:result2:oke", A, 0.0)  # unknown cookie
    client.receive(b"no-space-at-all", A, 0.0)
    client.receive(split(data)[0] + b" d6:result", A, 0.0)  # garbage body: like a loss
    client.receive(b"", A, 0.0)
    assert done.calls == []
    assert client.stray == 6
    client.receive(answer(data, {"result": "ok"}), A, 0.2)
    client.receive(answer(data, {"result": "ok"}), A, 0.3)  # a duplicate: ignored
    assert done.reply == {"result": "ok"}
    assert client.stray == 7


def test_retransmits_same_bytes_then_next_relay_then_gives_up() -> None:
    client = NgClient([A, B], timeout=0.5, tries=3)
    done = Done()
    client.request({"command": "offer", "call-id": "c1"}, 0.0, done)
    sent = drain(client)
    times = []
    while (t := client.next_deadline()) is not None and t < 3.2:
        client.handle_timer(t)
        times.append(t)
        sent += [(a, d) for a, d in drain(client) if split(d)[1]["command"] != "ping"]
    # three sends to A (0, 0.5, 1.0), three to B (1.5, 2.0, 2.5), done(None) at 3.0
    assert [a for a, _ in sent] == [A, A, A, B, B, B]
    assert len({d for _, d in sent}) == 1  # the same bytes, the same cookie, every time
    assert done.calls == [(None, 3.0)]
    assert client.retransmissions == 4
    assert client.timeouts == 2
    assert client.requests[("offer", "timeout")] == 1
    assert not client.up
    assert times[:6] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]


def test_no_relay_alive_or_table_full_is_false_at_once() -> None:
    client = NgClient([A], max_pending=2)
    assert client.request({"command": "query"}, 0.0, Done())
    assert client.request({"command": "query"}, 0.0, Done())
    never = Done()
    assert not client.request({"command": "query"}, 0.0, never)
    assert client.requests[("query", "refused")] == 1
    t = 0.0
    while client.pending:
        t = client.next_deadline() or t
        client.handle_timer(t)
    assert not client.up
    assert not client.request({"command": "offer"}, t, never)
    assert never.calls == []
    assert len(client.outbox) <= 3 * 2 + 1  # bounded: tries per request, one ping


def test_dead_relay_is_skipped_pinged_and_used_again(caplog: pytest.LogCaptureFixture) -> None:
    client = NgClient([A, B], timeout=0.5, tries=2, ping_interval=2.0)
    up = {A: False, B: True}
    done = Done()
    client.request({"command": "offer", "call-id": "c1"}, 0.0, done)
    serve(client, 0.0, up)
    client.handle_timer(0.5)
    serve(client, 0.5, up)  # the retransmission to A, lost
    client.handle_timer(1.0)  # A had its tries: B, which answers
    assert serve(client, 1.0, up) == 0
    assert done.reply == {"result": "ok"}
    assert [r.alive for r in client.relays] == [False, True]
    assert client.affinity == {"c1": client.relays[1]}
    # a new call goes straight to B while A is dead
    client.request({"command": "offer", "call-id": "c2"}, 1.1, Done())
    assert [a for a, _ in client.outbox] == [B]
    serve(client, 1.1, up)
    # A is pinged every ping_interval while dead; the pings are lost
    assert client.next_deadline() == 3.0
    client.handle_timer(3.0)
    [(addr, ping)] = drain(client)
    assert addr == A and split(ping)[1] == {"command": "ping"}
    client.handle_timer(5.0)
    [(addr, ping)] = drain(client)
    assert addr == A
    # A comes back: the pong marks it alive, new calls go to it again, c1 stays on B
    client.receive(answer(ping, {"result": "pong"}), A, 5.1)
    assert client.up and client.relays_up == 2
    assert [r.getMessage() for r in caplog.records] == [
        "rtpengine udp:127.0.0.1:2223 did not answer 2 tries in 1.0 s: skipped until it "
        "answers a ping",
        "rtpengine udp:127.0.0.1:2223 answers again: in use",
    ]
    client.request({"command": "offer", "call-id": "c3"}, 5.2, Done())
    client.request({"command": "delete", "call-id": "c1"}, 5.2, Done())
    assert [a for a, _ in client.outbox] == [A, B]
    serve(client, 5.2, {A: True, B: True})
    a, b = client.relays
    assert client.affinity == {"c2": b, "c3": a}  # c1 forgotten at its delete
    assert client.next_deadline() is None


def test_requests_in_flight_leave_a_relay_found_dead_at_their_next_timeout() -> None:
    client = NgClient([A, B], timeout=0.5, tries=3)
    first, second = Done(), Done()
    up = {A: False, B: True}
    client.request({"command": "offer", "call-id": "c1"}, 0.0, first)
    serve(client, 0.0, up)
    client.handle_timer(0.5)
    serve(client, 0.5, up)
    client.request({"command": "offer", "call-id": "c2"}, 0.9, second)
    serve(client, 0.9, up)
    for t in (1.0, 1.4):  # c1's third send; c2's second
        client.handle_timer(t)
        serve(client, t, up)
    client.handle_timer(1.5)  # c1 had its three tries: A is dead, c1 goes to B
    serve(client, 1.5, up)
    assert first.reply == {"result": "ok"} and second.calls == []
    client.handle_timer(1.9)  # c2's next timeout: A is dead, so to B, not a third try
    assert [a for a, _ in client.outbox] == [B]
    serve(client, 1.9, up)
    assert second.reply == {"result": "ok"}
    assert client.timeouts == 1 and client.retransmissions == 3


def test_a_lone_relay_found_dead_is_still_tried_by_the_requests_in_flight() -> None:
    client = NgClient([A], timeout=0.5, tries=2)
    first, second = Done(), Done()
    client.request({"command": "offer", "call-id": "c1"}, 0.0, first)
    client.request({"command": "offer", "call-id": "c2"}, 0.2, second)
    drain(client)
    client.handle_timer(0.5)  # c1 again
    client.handle_timer(0.7)  # c2 again
    client.handle_timer(1.0)  # c1 gives up: A marked dead
    assert first.calls == [(None, 1.0)] and not client.up
    [(_, data)] = [(a, d) for a, d in drain(client) if split(d)[1].get("call-id") == "c2"]
    client.receive(answer(data, {"result": "ok"}), A, 1.1)  # c2's reply comes after all
    assert second.reply == {"result": "ok"} and client.up


def test_probe_pings_each_relay_on_its_own() -> None:
    client = NgClient([A, B], timeout=0.5, tries=2)
    client.probe(0.0)
    sent = drain(client)
    assert [a for a, _ in sent] == [A, B]
    assert all(split(d)[1] == {"command": "ping"} for _, d in sent)
    (_, ping_b) = sent[1]
    client.receive(answer(ping_b, {"result": "pong"}), B, 0.1)
    client.handle_timer(0.5)
    assert [a for a, _ in drain(client)] == [A]  # A's probe tried again on A, never on B
    client.handle_timer(1.0)
    assert [r.alive for r in client.relays] == [False, True]
    assert drain(client) == []  # no failover of a probe
    assert client.requests == {("ping", "pong"): 1, ("ping", "timeout"): 1}
    assert client.pending == 0
    client.probe(1.1)  # only the live ones: the dead are pinged on their own schedule
    assert [a for a, _ in drain(client)] == [B]


def test_stale_ping_reply_does_not_revive() -> None:
    client = NgClient([A], timeout=0.5, tries=1, ping_interval=1.0)
    client.request({"command": "query"}, 0.0, Done())
    drain(client)
    client.handle_timer(0.5)
    client.handle_timer(1.5)
    [(_, ping1)] = drain(client)
    client.handle_timer(2.5)
    [(_, ping2)] = drain(client)
    client.receive(answer(ping1, {"result": "pong"}), A, 2.6)  # the old cookie
    assert not client.up
    client.receive(answer(ping2, {"result": "pong"}), B, 2.6)  # the wrong address
    assert not client.up
    client.receive(answer(ping2, {"result": "pong"}), A, 2.6)
    assert client.up
    assert client.requests[("ping", "timeout")] == 1
    assert client.requests[("ping", "pong")] == 1


def test_a_late_reply_from_the_first_relay_after_failover_is_ignored() -> None:
    client = NgClient([A, B], timeout=0.5, tries=1)
    done = Done()
    client.request({"command": "offer", "call-id": "c1"}, 0.0, done)
    [(_, data)] = drain(client)
    client.handle_timer(0.5)
    assert [a for a, _ in drain(client)] == [B]
    client.receive(answer(data, {"result": "ok"}), A, 0.6)
    assert done.calls == []
    client.receive(answer(data, {"result": "ok"}), B, 0.7)
    assert done.reply == {"result": "ok"}


def test_one_slow_request_delays_no_other() -> None:
    client = NgClient([A], timeout=0.5, tries=3)
    slow, fast = Done(), Done()
    client.request({"command": "offer", "call-id": "slow"}, 0.0, slow)
    client.request({"command": "offer", "call-id": "fast"}, 0.1, fast)
    (_, d_slow), (_, d_fast) = drain(client)
    client.receive(answer(d_fast, {"result": "ok"}), A, 0.2)
    assert fast.reply == {"result": "ok"} and slow.calls == []
    client.handle_timer(0.5)
    assert [d for _, d in drain(client)] == [d_slow]
    assert client.next_deadline() == 1.0


def test_a_delete_that_gets_no_reply_forgets_the_call_too() -> None:
    client = NgClient([A], timeout=0.5, tries=1)
    client.request({"command": "offer", "call-id": "c1"}, 0.0, Done())
    serve(client, 0.0, {A: True})
    assert list(client.affinity) == ["c1"]
    done = Done()
    client.request({"command": "delete", "call-id": "c1"}, 1.0, done)
    drain(client)
    client.handle_timer(1.5)
    assert done.calls == [(None, 1.5)] and client.affinity == {}


def test_affinity_is_bounded() -> None:
    client = NgClient([A], max_affinity=3, max_pending=100)
    for i in range(10):
        client.request({"command": "offer", "call-id": f"c{i}"}, 0.0, Done())
    serve(client, 0.0, {A: True})
    assert list(client.affinity) == ["c7", "c8", "c9"]


def test_named_relay_waits_for_its_address() -> None:
    client = NgClient([("rtp.example.org", 2223)])
    assert not client.up
    assert not client.request({"command": "ping"}, 0.0, Done())
    assert client.next_deadline() is None
    client.resolved("rtp.example.org", "127.0.0.1", 1.0)
    assert client.next_deadline() == 1.0
    client.handle_timer(1.0)
    [(addr, ping)] = drain(client)
    assert addr == A
    client.receive(answer(ping, {"result": "pong"}), A, 1.1)
    assert client.up


def test_hostile_replies_never_raise() -> None:
    rng = random.Random(16)
    client = NgClient([A])
    done = Done()
    client.request({"command": "query"}, 0.0, done)
    [(_, data)] = drain(client)
    cookie = split(data)[0]
    for _ in range(5000):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        client.receive(cookie + b" " + body if rng.random() < 0.5 else body, A, 0.0)
    assert client.pending <= 1


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        ("udp:127.0.0.1:2223", ("127.0.0.1", 2223)),
        ("udp:[::1]:22222", ("::1", 22222)),
        ("udp:rtp.example.org:2225", ("rtp.example.org", 2225)),
    ],
)
def test_parse_control(text: str, addr: tuple[str, int]) -> None:
    assert parse_control(text) == addr


@pytest.mark.parametrize(
    "text", ["127.0.0.1:2223", "udp:127.0.0.1", "udp::22", "udp:::1:22", "udp:[::g]:22",
             "udp:1.2.3.4:0", "udp:1.2.3.4:65536", "udp:[::1:22", "tcp:1.2.3.4:22"]
)  # fmt: skip
def test_parse_control_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_control(text)


def test_misuse_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        NgClient([A], timeout=0)
    with pytest.raises(ValueError):
        NgClient([A], tries=0)


def test_reconfigure_keeps_relays_and_lets_requests_end() -> None:
    client = NgClient([A, B], timeout=0.5, tries=1)
    kept = client.relays[1]
    done = Done()
    client.request({"command": "offer", "call-id": "c1"}, 0.0, done)
    [(_, data)] = drain(client)
    client.reconfigure([B, ("127.0.0.1", 2225)])
    assert client.relays[0] is kept
    # the request sent to A (gone) still ends there
    client.receive(answer(data, {"result": "ok"}), A, 0.1)
    assert done.reply == {"result": "ok"}
    # a new call goes to the first of the new list; the old call's affinity is let go
    client.request({"command": "answer", "call-id": "c1"}, 0.2, Done())
    assert [a for a, _ in drain(client)] == [B]
    client.reconfigure([])
    assert not client.up
    assert not client.request({"command": "ping"}, 0.3, Done())


def test_ng_client_from_config_and_earliest() -> None:
    outbox: list[tuple[tuple[str, int], bytes]] = []
    assert ng_client([], None, outbox) is None
    client = ng_client(["udp:127.0.0.1:2223"], None, outbox)
    assert client is not None and client.outbox is outbox
    assert ng_client(["udp:[::1]:2224"], client, outbox) is client
    assert client.controls == (("::1", 2224),)
    assert ng_client([], client, outbox) is client and not client.up
    assert earliest(None, None) is None
    assert earliest(1.0, None) == 1.0
    assert earliest(None, 2.0) == 2.0
    assert earliest(3.0, 2.0) == 2.0


# -- against the real rtpengine --------------------------------------------------------------


async def drive(client: NgClient, until: Callable[[], bool], limit: float = 10.0) -> None:
    """A tiny asyncio driver: one UDP socket, the outbox sent, replies fed, the timer run."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    end = loop.time() + limit
    try:
        while not until() and loop.time() < end:
            for addr, data in drain(client):
                sock.sendto(data, addr)
            deadline = client.next_deadline()
            wait = 0.05 if deadline is None else max(0.0, min(0.05, deadline - loop.time()))
            try:
                data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 65535), wait)
                client.receive(data, addr[:2], loop.time())
            except TimeoutError:
                pass
            client.handle_timer(loop.time())
    finally:
        sock.close()


FLAGS: dict[str, Any] = {"replace": ["origin", "session-connection"], "ICE": "remove"}
CALLER_SDP = (
    "v=0\r\no=caller 1 1 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\n"
    "m=audio 16000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\n"
    "a=candidate:1 1 UDP 2130706431 127.0.0.3 16000 typ host\r\n"
)
CALLEE_SDP = CALLER_SDP.replace("127.0.0.3", "127.0.0.2").replace("16000", "17000")


def sent(client: NgClient, command: dict[str, Any], now: float) -> Done:
    done = Done()
    assert client.request(command, now, done)
    return done


@pytest.mark.rtpengine
async def test_offer_answer_query_delete_on_real_rtpengine(
    rtpengine_factory: Callable[..., Rtpengine],  # noqa: F811
) -> None:
    rtp = rtpengine_factory()
    client = NgClient([rtp.address], timeout=0.3, tries=3)
    now = asyncio.get_running_loop().time
    base = {"call-id": "ng-1", "from-tag": "ft"}
    offer = sent(client, {"command": "offer", **base, "sdp": CALLER_SDP, **FLAGS}, now())
    await drive(client, lambda: bool(offer.calls))
    reply = offer.reply
    assert reply is not None and reply["result"] == "ok"
    sdp = str(reply["sdp"])
    assert f"o=caller 1 1 IN IP4 {rtp.ip}" in sdp and f"c=IN IP4 {rtp.ip}" in sdp
    assert "127.0.0.3" not in sdp and "candidate" not in sdp and "ice-" not in sdp
    ans = sent(
        client,
        {"command": "answer", **base, "to-tag": "tt", "sdp": CALLEE_SDP, **FLAGS},
        now(),
    )
    await drive(client, lambda: bool(ans.calls))
    reply = ans.reply
    assert reply is not None and reply["result"] == "ok"
    assert "127.0.0.2" not in str(reply["sdp"]) and "candidate" not in str(reply["sdp"])
    query = sent(client, {"command": "query", "call-id": "ng-1"}, now())
    await drive(client, lambda: bool(query.calls))
    assert query.reply is not None and set(query.reply["tags"]) == {"ft", "tt"}  # type: ignore[arg-type]
    delete = sent(client, {"command": "delete", **base}, now())
    await drive(client, lambda: bool(delete.calls))
    assert delete.reply is not None and delete.reply["result"] == "ok"
    assert rtp.list_calls() == []
    assert rtp.query("ng-1")["result"] == "error"
    assert client.requests == {(c, "ok"): 1 for c in ("offer", "answer", "query", "delete")}
    assert client.retransmissions == 0


@pytest.mark.rtpengine
async def test_first_relay_dead_then_back(
    rtpengine_factory: Callable[..., Rtpengine],  # noqa: F811
) -> None:
    second = rtpengine_factory()
    with dead_relay() as dead:
        client = NgClient([dead, second.address], timeout=0.2, tries=2, ping_interval=0.5)
        now = asyncio.get_running_loop().time
        offer = sent(
            client, {"command": "offer", "call-id": "d1", "from-tag": "f", "sdp": CALLER_SDP}, now()
        )
        await drive(client, lambda: bool(offer.calls))
        assert offer.reply is not None and offer.reply["result"] == "ok"
        assert second.list_calls() == ["d1"]
        assert [r.alive for r in client.relays] == [False, True]
        assert client.retransmissions == 1 and client.timeouts == 1
        # the next one goes straight to the second
        q = sent(client, {"command": "query", "call-id": "d1"}, now())
        await drive(client, lambda: bool(q.calls))
        assert q.reply is not None and q.reply["result"] == "ok"
        assert client.retransmissions == 1
    # the dead one comes back on its port: the client's pings find it
    first = rtpengine_factory(ng_port=dead[1])
    await drive(client, lambda: client.relays[0].alive)
    assert client.relays_up == 2
    o2 = sent(
        client, {"command": "offer", "call-id": "d2", "from-tag": "f", "sdp": CALLER_SDP}, now()
    )
    await drive(client, lambda: bool(o2.calls))
    assert first.list_calls() == ["d2"]
    # d1 stays with the relay that holds its session
    d = sent(client, {"command": "delete", "call-id": "d1", "from-tag": "f"}, now())
    await drive(client, lambda: bool(d.calls))
    assert d.reply is not None and d.reply["result"] == "ok"
    assert second.list_calls() == []


@pytest.mark.rtpengine
async def test_all_relays_dead_done_none_in_bounded_time() -> None:
    with dead_relay() as one, dead_relay("127.0.0.1") as two:
        client = NgClient([one, two], timeout=0.2, tries=2)
        loop = asyncio.get_running_loop()
        start = loop.time()
        done = sent(client, {"command": "offer", "call-id": "x", "sdp": CALLER_SDP}, start)
        await drive(client, lambda: bool(done.calls))
        assert done.calls and done.calls[0][0] is None
        took = done.calls[0][1] - start
        assert 0.8 <= took < 1.2  # 2 relays x 2 tries x 0.2 s
        assert not client.up
        assert not client.request({"command": "ping"}, loop.time(), Done())


def test_a_query_or_delete_goes_only_to_the_call_s_own_relay() -> None:
    """Another relay has no session of the call: its "unknown call" would read as gone."""
    client = NgClient([A, B], timeout=0.5, tries=2)
    client.request({"command": "offer", "call-id": "c1"}, 0.0, Done())
    serve(client, 0.0, {A: True, B: True})
    assert client.affinity == {"c1": client.relays[0]}
    query = Done()
    assert client.request({"command": "query", "call-id": "c1"}, 1.0, query)
    sent = [a for a, _ in drain(client)]
    for t in (1.5, 2.0):
        client.handle_timer(t)
        sent += [a for a, _ in drain(client) if split(_)[1]["command"] != "ping"]
    assert sent == [A, A] and query.calls == [(None, 2.0)]  # no reply: never B
    # A is down now: the call's query and delete are refused, not sent to B
    assert not client.request({"command": "query", "call-id": "c1"}, 2.1, Done())
    assert not client.request({"command": "delete", "call-id": "c1"}, 2.1, Done())
    assert client.outbox == [] and client.affinity == {}
    # a new call goes to B all the same
    assert client.request({"command": "offer", "call-id": "c2"}, 2.2, Done())
    assert [a for a, _ in drain(client)] == [B]
