"""Which name a TLS connection must prove and which connection may carry a flow
(``sipguard.net.tlspeer``), without sockets."""

from __future__ import annotations

import ipaddress

from sipguard.config.model import Trunk
from sipguard.net.tlspeer import expected_name, may_carry, proves, server_name

CARRIER = Trunk("carrier", sources=(ipaddress.ip_network("127.0.0.5/32"),), tls_name="sbc.test")
PLAIN = Trunk("plain", sources=(ipaddress.ip_network("127.0.0.6/32"),))


def test_the_routed_name_first_then_the_source_trunks() -> None:
    assert expected_name("target.test", CARRIER) == "target.test"
    assert expected_name(None, CARRIER) == "sbc.test"
    assert expected_name(None, PLAIN) is None
    assert expected_name(None, None) is None


def test_sni_is_sent_for_a_host_name_only() -> None:
    assert server_name("sbc.test") == "sbc.test"
    assert server_name("*.carrier.test") is None
    assert server_name(None) is None


def test_a_peer_proves_the_name_its_certificate_holds() -> None:
    assert proves(None, frozenset())
    assert proves("sbc.test", frozenset({"sbc.test"}))
    assert not proves("sbc.test", frozenset({"other.test"}))
    assert proves("*.carrier.test", frozenset({"sbc1.carrier.test"}))
    assert not proves("*.carrier.test", frozenset({"a.b.carrier.test"}))


def test_a_connection_carries_a_flow_that_needs_a_name_only_once_proved_there() -> None:
    names = frozenset({"sbc.test"})
    assert may_carry(None, 0, 1, None, frozenset())  # no name needed: any connection
    assert may_carry("sbc.test", 0, 0, None, names)  # its certificate holds it
    assert may_carry("sbc.test", 0, 0, "sbc.test", frozenset())  # opened by us for it
    assert not may_carry("sbc.test", 0, 0, None, frozenset({"other.test"}))
    assert not may_carry("sbc.test", 0, 0, "other.test", frozenset())
    # verified against another listen entry's CAs: not proof here (RFC 5923 §6)
    assert not may_carry("sbc.test", 0, 1, None, names)
