"""A trunk's ``tls_name`` (SPEC §2: "a TLS trunk may also require a certificate name"):
the names a certificate proves (RFC 5922 §7.1), and the core matching a request to such
a trunk only over TLS from a certificate with that name."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from sipguard.sip.tlsnames import certificate_names, name_matches
from testkit.callsim import CONFIG, Wire, config_text, invite, requests, responses

TLS = Path(__file__).parent / "data" / "tls"


def decoded(name: str) -> dict[str, Any]:
    """What ``getpeercert()`` gives for one of the test certificates."""
    cert: dict[str, Any] = ssl._ssl._test_decode_cert(str(TLS / f"{name}.crt"))  # type: ignore[attr-defined]
    return cert


def test_the_names_a_certificate_holds() -> None:
    assert certificate_names(decoded("sbc1")) == {"sbc1.carrier.test"}
    # a sip: URI in subjectAltName names a domain; the common name is then not used
    assert certificate_names(decoded("sipuri")) == {"pbx.customer.test"}
    assert certificate_names(decoded("sipguard")) == {"sipguard.test"}  # IP entries: no name
    assert certificate_names(None) == frozenset()
    assert certificate_names({}) == frozenset()


def test_the_common_name_counts_only_without_subject_alt_names() -> None:
    subject = ((("commonName", "Old.Style.Test"),),)
    assert certificate_names({"subject": subject}) == {"old.style.test"}
    with_san = {"subject": subject, "subjectAltName": (("DNS", "new.test"),)}
    assert certificate_names(with_san) == {"new.test"}
    # a sip: URI with a user part is no domain: nothing, and still no common name
    user = {"subject": subject, "subjectAltName": (("URI", "sip:alice@new.test"),)}
    assert certificate_names(user) == frozenset()
    # nor when the subjectAltName holds only addresses
    address = {"subject": subject, "subjectAltName": (("IP Address", "192.0.2.1"),)}
    assert certificate_names(address) == frozenset()


def test_a_sip_uri_names_its_domain_without_port_or_parameters() -> None:
    san = (
        ("URI", "sip:a.example.net:5061;transport=tls"),
        ("URI", "SIP:B.Example.Net"),
        ("URI", "sips:c.example.net"),  # RFC 5922 §7.1 names sip: URIs only
        ("URI", "https://d.example.net"),
    )
    assert certificate_names({"subjectAltName": san}) == {"a.example.net", "b.example.net"}


@pytest.mark.parametrize(
    ("tls_name", "names", "matches"),
    [
        ("sbc1.carrier.test", {"sbc1.carrier.test"}, True),
        ("SBC1.Carrier.Test", {"sbc1.carrier.test"}, True),
        ("sbc2.carrier.test", {"sbc1.carrier.test"}, False),
        ("*.carrier.test", {"sbc1.carrier.test"}, True),
        ("*.carrier.test", {"carrier.test"}, False),  # one label in front, not none
        ("*.carrier.test", {"a.sbc1.carrier.test"}, False),  # nor two
        ("*.carrier.test", {"sbc1.carrier.test.evil"}, False),
        ("*.carrier.test", {"*.carrier.test"}, False),  # a wildcard certificate proves nothing
        ("sbc1.carrier.test", frozenset(), False),
    ],
)
def test_a_tls_name_against_the_names_proven(tls_name: str, names: set[str], matches: bool) -> None:
    assert name_matches(tls_name, frozenset(names)) is matches


# -- in the core -------------------------------------------------------------------------------

TLS_CONFIG = CONFIG.replace(
    "  - {transport: tcp, address: 127.0.0.1, port: 5060}\n",
    "  - {transport: tls, address: 127.0.0.1, port: 5061, cert: s.crt, key: s.key, ca: ca.crt}\n",
).replace(
    "    route_to: pbx\n    allowed_cli:",
    '    route_to: pbx\n    tls_name: "*.carrier.test"\n    allowed_cli:',
)


def tls_wire(names: frozenset[str]) -> Wire:
    w = Wire(config_text(TLS_CONFIG), caller_transport="tls")
    assert w.config.listen[1].transport == "tls"
    assert w.config.trunks["customers"].tls_name == "*.carrier.test"
    w.core.connection_up(1, names)
    return w


def test_a_request_over_tls_from_a_certificate_with_the_name_is_the_trunks() -> None:
    w = tls_wire(frozenset({"sbc1.carrier.test"}))
    w.from_caller(invite(1))
    assert len(requests(w.take_callee(), "INVITE")) == 1


@pytest.mark.parametrize(
    "names", [frozenset({"stranger.test"}), frozenset({"carrier.test"}), frozenset()]
)
def test_a_request_over_tls_without_the_name_matches_no_trunk(names: frozenset[str]) -> None:
    w = tls_wire(names)
    w.from_caller(invite(1))
    assert [r.status for r in responses(w.take_caller()) if r.status >= 200] == [403]
    assert requests(w.take_callee()) == []


def test_the_same_source_over_udp_matches_no_trunk_that_needs_a_name() -> None:
    w = tls_wire(frozenset({"sbc1.carrier.test"}))
    w.caller_transport = "udp"
    w.from_caller(invite(1))
    assert [r.status for r in responses(w.take_caller()) if r.status >= 200] == [403]
    assert requests(w.take_callee()) == []


ROUTED_CONFIG = CONFIG.replace(
    "  - {transport: tcp, address: 127.0.0.1, port: 5060}\n",
    "  - {transport: tls, address: 127.0.0.1, port: 5061, cert: s.crt, key: s.key, ca: c}\n",
).replace('    targets: ["sip:127.0.0.2:5080"]\n', '    tls_name: "*.carrier.test"\n')


@pytest.mark.parametrize(
    ("ruri", "sent"),
    [
        ("sip:0201234567@127.0.0.2:5080", False),  # UDP: never, towards a named trunk
        ("sip:0201234567@127.0.0.2:5080;transport=tcp", False),
        ("sip:0201234567@127.0.0.2:5080;transport=tls", True),
    ],
)
def test_a_trunk_with_a_tls_name_is_reached_over_tls_only(ruri: str, sent: bool) -> None:
    """A trunk without targets receives its calls at the Request-URI (inside its sources):
    with a tls_name, only where that is a TLS address; the name then goes with the route."""
    w = Wire(config_text(ROUTED_CONFIG))
    assert w.config.trunks["pbx"].targets == ()
    w.from_caller(
        invite(1).replace(b"INVITE sip:0201234567@127.0.0.1:5060 ", f"INVITE {ruri} ".encode())
    )
    got = requests(w.take_callee(), "INVITE")
    assert len(got) == int(sent)
    finals = [r.status for r in responses(w.take_caller()) if r.status >= 200]
    assert finals == ([] if sent else [403])
