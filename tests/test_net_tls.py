"""TLS in the running process: a trunk that requires a certificate name (SPEC §2).

sipguard listens on TLS with its certificate and the test CA (``tests/data/tls``, made by
``tools/make_test_certs.sh``); the customers trunk (source 127.0.0.3) has
``tls_name: "*.carrier.test"``. A caller on 127.0.0.3 with a certificate for
``sbc1.carrier.test`` gets its call through; with another name, with none, over UDP, it
gets ``403``; with a certificate from another CA the handshake fails. Towards a trunk
with a ``tls_name``, the B-leg goes only to a TLS server whose certificate holds it. The
process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from testkit.rawsip import (
    SDP,
    UdpPeer,
    header,
    scrape_samples,
    sip_request,
    status_of,
)
from testkit.sipp import (
    CALLER_IP,
    SIPGUARD_IP,
    Setup,
    Sipguard,
    free_port,
    running,
    write_config,
)
from testkit.tls import TLS, listens

pytestmark = [pytest.mark.timeout(60)]


def tls_call(port: int, cert: str | None) -> tuple[list[int], str | None]:
    """An INVITE over TLS from 127.0.0.3 with ``cert`` (a test certificate, or none):
    the statuses answered within 2 s, and the TLS error (or "closed") if the connection
    failed or was closed by sipguard."""
    ctx = ssl.create_default_context(cafile=str(TLS / "ca.crt"))  # sipguard's: IP 127.0.0.1
    if cert is not None:
        ctx.load_cert_chain(str(TLS / f"{cert}.crt"), str(TLS / f"{cert}.key"))
    raw = socket.create_connection((SIPGUARD_IP, port), timeout=3, source_address=(CALLER_IP, 0))
    statuses: list[int] = []
    try:
        with ctx.wrap_socket(raw, server_hostname=SIPGUARD_IP) as tls:
            local = tls.getsockname()[:2]
            tls.sendall(sip_request("INVITE", local=local, transport="TLS", body=SDP))
            data = b""
            deadline = time.monotonic() + 2.0
            while (left := deadline - time.monotonic()) > 0:
                tls.settimeout(left)
                try:
                    chunk = tls.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    return statuses, "closed"
                data += chunk
                statuses = [
                    s
                    for part in data.split(b"SIP/2.0 ")[1:]
                    if (s := status_of(b"SIP/2.0 " + part))
                ]
                if any(s >= 200 for s in statuses):
                    break
    except (ssl.SSLError, ConnectionError) as exc:
        return statuses, type(exc).__name__
    finally:
        with contextlib.suppress(OSError):
            raw.close()
    return statuses, None


def test_a_trunk_with_a_tls_name_takes_calls_only_from_a_certificate_with_that_name(
    tmp_path: Path,
) -> None:
    port = free_port()
    setup = write_config(
        tmp_path,
        sip_port=port,
        overrides={
            "listen": listens(port),
            "trunks": {"customers": {"tls_name": "*.carrier.test"}},
        },
    )
    sg = Sipguard(setup)
    callee = UdpPeer("127.0.0.2", setup.callee_port)
    with running(sg):
        sg.start()
        named = tls_call(port, "sbc1")
        forwarded = [f for f in callee.recv_all(1.0) if f.startswith(b"INVITE ")]
        stranger = tls_call(port, "stranger")
        anonymous = tls_call(port, None)
        forged = tls_call(port, "forged")
        udp = UdpPeer()
        over_udp = udp.transact(
            sip_request("INVITE", local=udp.local, body=SDP), (SIPGUARD_IP, port)
        )
        udp.close()
        later = [f for f in callee.recv_all(0.5) if f.startswith(b"INVITE ")]
        log = sg.log_tail(200)
        samples = scrape_samples(sg)
    callee.close()

    assert named == ([100], None), (named, log)
    assert len({header(f, "Call-ID") for f in forwarded}) == 1, log  # on to the pbx trunk
    assert stranger == ([403], None), (stranger, log)
    assert anonymous == ([403], None), (anonymous, log)
    statuses, error = forged
    assert error is not None and not statuses, forged  # another CA: no TLS session at all
    assert "Traceback" not in log
    assert over_udp is not None and status_of(over_udp) == 403, over_udp
    # (the first call's INVITE is retransmitted meanwhile: the callee never answers it)
    new_calls = {header(f, "Call-ID") for f in later} - {header(f, "Call-ID") for f in forwarded}
    assert not new_calls, "a refused call reached the callee"
    refused = [
        v
        for n, lab, v in samples
        if n == "sipguard_rejected_total" and lab == {"reason": "tls_name"}
    ]
    assert refused == [3.0], refused  # the other name, none, and UDP


class TlsServer:
    """A TLS server on 127.0.0.2 with a test certificate: the bytes of the first connection."""

    def __init__(self, cert: str) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(TLS / f"{cert}.crt"), str(TLS / f"{cert}.key"))
        self.ctx = ctx
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.2", 0))
        self.sock.listen(4)
        self.port: int = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(5.0)
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            with contextlib.suppress(OSError), self.ctx.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(2.0)
                while chunk := tls.recv(65536):
                    self.received += chunk

    def close(self) -> None:
        self.thread.join(6.0)
        self.sock.close()


def tls_config(tmp_path: Path, port: int, pbx: dict[str, object]) -> Setup:
    """UDP and TLS (with the test CA) on ``port``; ``pbx``: fields of the pbx trunk."""
    return write_config(
        tmp_path,
        sip_port=port,
        overrides={
            "listen": listens(port),
            # the pbx's sources are not where its targets are: the name to check comes
            # from where the call is routed, not from the sources
            "trunks": {"pbx": {"sources": ["127.0.0.9/32"], **pbx}},
        },
    )


@pytest.mark.parametrize(
    ("cert", "tls_name", "reached"),
    [
        ("sbc1", "sbc1.carrier.test", True),
        ("sbc1", "*.carrier.test", True),  # no SNI: the name is checked by sipguard
        ("stranger", "sbc1.carrier.test", False),
        ("stranger", "*.carrier.test", False),
    ],
)
def test_a_tls_target_must_hold_its_trunks_name(
    tmp_path: Path, cert: str, tls_name: str, reached: bool
) -> None:
    """Towards a trunk with a tls_name, the B-leg goes only to a server whose certificate
    (verified against the listen entry's ca) holds that name; otherwise the connection is
    closed before anything is sent, and the call fails."""
    server = TlsServer(cert)
    port = free_port()
    target = f"sip:127.0.0.2:{server.port};transport=tls"
    setup = tls_config(tmp_path, port, {"targets": [target], "tls_name": tls_name})
    sg = Sipguard(setup)
    caller = UdpPeer()
    try:
        with running(sg):
            sg.start()
            invite = sip_request("INVITE", local=caller.local, body=SDP)
            final = caller.transact(invite, (SIPGUARD_IP, port), timeout=3.0 if reached else 10.0)
            log = sg.log_tail(200)
            failures = sum(
                v for n, _, v in scrape_samples(sg) if n == "sipguard_tls_name_failures_total"
            )
    finally:
        caller.close()
        server.close()
    if reached:
        assert server.received.startswith(b"INVITE sip:"), (server.received[:200], log)
        assert failures == 0
    else:
        assert server.received == b"", server.received[:200]
        assert final is not None and status_of(final) in (408, 480, 500, 502, 503), (final, log)
        assert f"is not {tls_name}: its certificate holds stranger.test" in log, log
        assert failures >= 1  # the "TLS name failures" alert (docker/prometheus/alerts.yml)


def test_a_connection_from_the_targets_address_without_the_name_is_not_reused(
    tmp_path: Path,
) -> None:
    """A client that connects from the target's own address and port, with no
    certificate, is not the trunk's peer: the B-leg is never sent on its connection
    (RFC 5923 §6), but on a new one, which fails here (nobody listens there)."""
    target_port = free_port("127.0.0.2")
    port = free_port()
    target = f"sip:127.0.0.2:{target_port};transport=tls"
    setup = tls_config(tmp_path, port, {"targets": [target], "tls_name": "sbc1.carrier.test"})
    sg = Sipguard(setup)
    caller = UdpPeer()
    ctx = ssl.create_default_context(cafile=str(TLS / "ca.crt"))
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    raw.bind(("127.0.0.2", target_port))
    try:
        with running(sg):
            sg.start()
            raw.connect((SIPGUARD_IP, port))
            with ctx.wrap_socket(raw, server_hostname=SIPGUARD_IP) as impostor:
                impostor.settimeout(0.5)
                invite = sip_request("INVITE", local=caller.local, body=SDP)
                final = caller.transact(invite, (SIPGUARD_IP, port), timeout=10.0)
                got = b""
                with contextlib.suppress(TimeoutError, ssl.SSLError, OSError):
                    while chunk := impostor.recv(65536):
                        got += chunk
            log = sg.log_tail(200)
    finally:
        caller.close()
        with contextlib.suppress(OSError):
            raw.close()
    assert b"INVITE" not in got, got[:200]
    assert final is not None and status_of(final) in (408, 480, 500, 502, 503), (final, log)
