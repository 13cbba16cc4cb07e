"""The ng control sockets and the resolution of named relays (``sipguard.net.media``)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from sipguard.net.media import NgSockets, resolve_names


async def test_one_socket_per_family_fed_and_sending() -> None:
    got: list[tuple[bytes, tuple[str, int]]] = []
    ng = NgSockets(lambda data, addr: got.append((data, addr)))
    try:
        await ng.ensure(["127.0.0.1", "127.0.0.2", "rtp.example.org", "::1"])
        assert set(ng.endpoints) == {socket.AF_INET, socket.AF_INET6}
        await ng.ensure(["127.0.0.9"])  # that family has its socket already
        assert len(ng.endpoints) == 2
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(2.0)
        try:
            ng.send(peer.getsockname(), b"abc d7:command4:pinge")
            data, src = peer.recvfrom(100)
            assert data == b"abc d7:command4:pinge"
            peer.sendto(b"abc d6:result4:ponge", ("127.0.0.1", src[1]))
            for _ in range(200):
                if got:
                    break
                await asyncio.sleep(0.01)
            assert got == [(b"abc d6:result4:ponge", peer.getsockname())]
        finally:
            peer.close()
    finally:
        ng.close()
    ng.send(("127.0.0.1", 9), b"x")  # closed: counted, not sent, no error
    assert ng.unsent == 1


async def test_a_family_without_a_socket_is_counted() -> None:
    ng = NgSockets(lambda data, addr: None)
    try:
        await ng.ensure(["127.0.0.1"])
        ng.send(("::1", 2223), b"x")
        assert ng.unsent == 1
    finally:
        ng.close()


async def test_names_resolved_and_failures_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()

    async def fake(host: str, port: int, **kwargs: Any) -> list[Any]:
        if host == "good.example":
            return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.5", port))]
        if host == "empty.example":
            return []
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(loop, "getaddrinfo", fake)
    seen: list[tuple[str, str]] = []
    found = await resolve_names(
        [("127.0.0.1", 1), ("good.example", 2), ("bad.example", 3), ("empty.example", 4)],
        lambda host, ip: seen.append((host, ip)),
    )
    assert found == ["127.0.0.5"]
    assert seen == [("good.example", "127.0.0.5")]
    assert "rtpengine.control: cannot resolve bad.example" in caplog.text
