"""The configuration loader: the reference file, defaults, every error with its line."""

from __future__ import annotations

import ipaddress
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipguard.config.loader import ConfigError, load_config, load_config_text
from sipguard.config.model import (
    DEFAULT_LISTEN,
    CdrConfig,
    ClirCodes,
    Config,
    Limits,
    Listen,
    Numbering,
    RtpEngine,
    SipTimers,
    Trunk,
    TrunkLimits,
)
from sipguard.media.ng import parse_control

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "config" / "sipguard.yaml"
DATA = Path(__file__).resolve().parent / "data" / "config"

net = ipaddress.ip_network
ip = ipaddress.ip_address

# fixture -> (line, field path, a word of the message)
BAD: dict[str, tuple[int, str, str]] = {
    "bad_unknown_key.yaml": (6, "trunks.customers.sorces", "did you mean 'sources'"),
    "bad_unknown_top_key.yaml": (2, "metric", "unknown field"),
    "bad_wrong_type.yaml": (4, "trunks.customers.sources", "expected a list"),
    "bad_bool_as_int.yaml": (4, "limits.emergency_max_calls", "got boolean 'true'"),
    "bad_int_as_string.yaml": (8, "trunks.customers.numbering.international_prefix", "quote"),
    "bad_cidr.yaml": (12, "trunks.customers.sources[1]", "invalid CIDR '10.0.0.0/33'"),
    "bad_cidr_host_bits.yaml": (6, "trunks.carrier.sources[1]", "host bits set"),
    "bad_ip_address.yaml": (3, "metrics.address", "invalid IP address 'localhost'"),
    "bad_port.yaml": (4, "listen[1].port", "out of range"),
    "bad_transport.yaml": (3, "listen[0].transport", "one of udp, tcp, tls"),
    "bad_tls_without_cert.yaml": (4, "listen[1].cert", "required with transport tls"),
    "bad_listen_missing_port.yaml": (3, "listen[0].port", "required field missing"),
    "bad_duplicate_listen.yaml": (5, "listen[2]", "already used by listen[0]"),
    "bad_route_to_unknown.yaml": (5, "trunks.customers.route_to", "no trunk named 'pbxx'"),
    "bad_emergency_route_to_unknown.yaml": (
        6,
        "trunks.customers.emergency_route_to",
        "no trunk named 'psap'",
    ),
    "bad_listen_trunks_unknown.yaml": (4, "listen[1].trunks[1]", "no trunk named 'custmers'"),
    "bad_overlapping_sources.yaml": (9, "trunks.pbx.sources[1]", "overlaps 10.0.0.0/8"),
    "bad_overlapping_sources_listen.yaml": (9, "trunks.pbx.sources[0]", "overlaps"),
    "bad_cli_pattern.yaml": (7, "trunks.customers.allowed_cli[1]", "can never match"),
    "bad_cli_pattern_letters.yaml": (5, "trunks.customers.allowed_cli[0]", "can never match"),
    "bad_restricted_number.yaml": (5, "trunks.customers.restricted_numbers[1]", "E.164"),
    "bad_default_cli.yaml": (6, "trunks.customers.default_cli", "E.164"),
    "bad_presentation.yaml": (5, "trunks.customers.presentation", "got 'withheld'"),
    "bad_target_uri.yaml": (5, "trunks.pbx.targets[1]", "sip: or sips: URI"),
    "bad_trunk_no_sources.yaml": (6, "trunks.spare.sources", "needs sources, targets"),
    "bad_trunk_name.yaml": (3, "trunks.pbx 1", "invalid name"),
    "bad_postgres_without_dsn.yaml": (3, "cdr.dsn", "required with sink postgres"),
    "bad_retention.yaml": (2, "cdr.retention_days", "at least 1"),
    "bad_emergency_numbers.yaml": (4, "emergency_numbers[1]", "expected a string"),
    "bad_clir_codes_same.yaml": (4, "clir_codes.present", "must differ"),
    "bad_anchor_without_rtpengine.yaml": (6, "trunks.customers.media", "rtpengine.control"),
    "bad_rtpengine_control.yaml": (3, "rtpengine.control[1]", "udp:HOST:PORT"),
    "bad_media_timeout.yaml": (4, "rtpengine.media_timeout", "0 or more, got -5"),
    "bad_sip_timer.yaml": (4, "sip.t2", "expected a number"),
    "bad_log_level.yaml": (2, "log_level", "got 'verbose'"),
    "bad_duplicate_key.yaml": (7, "trunks.pbx", "duplicate key (first at line 3)"),
    "bad_missing_trunks.yaml": (2, "trunks", "required field missing"),
    "bad_yaml_syntax.yaml": (7, "(yaml)", "expected ',' or ']'"),
}


def _error(load: Callable[[], object]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load()
    return info.value


# --- the reference configuration ------------------------------------------------------


def test_reference_file_is_the_spec_example() -> None:
    config = load_config(str(REFERENCE))
    assert config.source == str(REFERENCE)
    assert config.listen == (
        Listen("udp", "127.0.0.1", 5060),
        Listen("tcp", "127.0.0.1", 5060),
    )
    assert config.metrics is not None
    assert (config.metrics.address, config.metrics.port) == ("127.0.0.1", 9460)
    assert config.identity_domain == "sip.example.net"
    assert config.clir_codes == ClirCodes(withhold="#31#", present="*31#")
    assert config.emergency_numbers == ("112", "911")
    assert config.cdr == CdrConfig(sink="file", path="var/cdr", retention_days=92)
    assert config.limits == Limits(max_calls=10000, emergency_max_calls=200)
    assert config.rtpengine == RtpEngine(control=("udp:127.0.0.1:2223",), when_down="refuse")
    assert list(config.trunks) == ["customers", "pbx"]
    assert config.trunks["customers"] == Trunk(
        name="customers",
        sources=(net("127.0.0.3/32"),),
        trusted=False,
        route_to="pbx",
        emergency_route_to="pbx",
        presentation="allowed",
        restricted_numbers=frozenset({"+31201234999"}),
        permanent_numbers=frozenset(),
        allowed_cli=("+3120123*",),
        default_cli="+31201234000",
        cli_policy="replace",
        reject_anonymous=False,
        numbering=Numbering(country_code="31", national_prefix="0", international_prefix="00"),
        limits=TrunkLimits(cps=100, max_calls=1000),
        media="pass",
    )
    assert config.trunks["pbx"] == Trunk(
        name="pbx",
        sources=(net("127.0.0.2/32"),),
        trusted=True,
        targets=("sip:127.0.0.2:5080",),
        route_to="customers",
    )


def test_reference_file_needs_no_rtpengine() -> None:
    config = load_config(str(REFERENCE))
    assert all(t.media == "pass" for t in config.trunks.values())


# --- defaults and valid files ---------------------------------------------------------


def test_defaults_come_from_the_model() -> None:
    path = str(DATA / "good_minimal.yaml")
    expected = Config(
        source=path,
        listen=DEFAULT_LISTEN,
        trunks={"pbx": Trunk(name="pbx", sources=(net("127.0.0.2/32"),))},
    )
    assert load_config(path) == expected
    assert [(e.transport, e.address, e.port) for e in DEFAULT_LISTEN] == [
        ("udp", "127.0.0.1", 5060),
        ("tcp", "127.0.0.1", 5060),
    ]


def test_every_field_can_be_set() -> None:
    path = str(DATA / "good_full.yaml")
    config = load_config(path)
    assert config.listen == (
        Listen("udp", "192.0.2.1", 5060),
        Listen(
            "tls",
            "2001:db8::1",
            5061,
            trunks=("carrier",),
            cert="/etc/sipguard/tls.crt",
            key="/etc/sipguard/tls.key",
            ca="/etc/sipguard/peers-ca.crt",
        ),
    )
    assert config.metrics is None
    assert config.identity_domain == "voice.example.org"
    assert config.clir_codes == ClirCodes(withhold="*67", present="*82")
    assert config.emergency_numbers == ("112", "911", "999")
    assert config.cdr == CdrConfig(
        sink="postgres",
        path="/var/lib/sipguard/cdr",
        retention_days=30,
        dsn="postgresql://sipguard@db/sipguard",
        fsync="always",
        spool_path="/var/lib/sipguard/spool",
        spool_max_bytes=1048576,
        on_spool_full="drop",
    )
    assert config.limits == Limits(max_calls=500, emergency_max_calls=20, source_rps=50)
    assert config.rtpengine == RtpEngine(
        control=("udp:127.0.0.1:2223", "udp:[::1]:2224", "udp:rtp.example.org:2225"),
        when_down="pass",
        media_timeout=30.5,
    )
    # every control address the loader takes, the ng client parses the same way
    assert [parse_control(c) for c in config.rtpengine.control] == [
        ("127.0.0.1", 2223),
        ("::1", 2224),
        ("rtp.example.org", 2225),
    ]
    assert config.sip == SipTimers(
        t1=1.0,
        t2=8.0,
        t4=10.5,
        target_timeout=2.0,
        max_call_duration=0.0,
        session_expires=600,
        min_se=120,
        tcp_idle_timeout=60.0,
        max_message_bytes=8192,
    )
    assert isinstance(config.sip.t1, float)
    assert config.drain_seconds == 5.0
    assert config.log_level == "debug"
    assert config.trunks["carrier"] == Trunk(
        name="carrier",
        sources=(net("2001:db8:100::/48"),),
        trusted=True,
        route_to="pbx",
        emergency_route_to="psap",
        presentation="restricted",
        restricted_numbers=frozenset({"+31201234999", "+441632960000"}),
        permanent_numbers=frozenset({"+31201234998"}),
        allowed_cli=("+31*", "+44*", "+3120123??0"),
        default_cli="+31201234000",
        cli_policy="reject",
        reject_anonymous=True,
        numbering=Numbering(country_code="44", national_prefix="", international_prefix="011"),
        limits=TrunkLimits(cps=10, max_calls=100),
        media="anchor",
        targets=(
            "sips:sbc.carrier.example.com:5061;transport=tcp",
            "sip:[2001:db8:100::1];transport=tls",
        ),
        header_allowlist=frozenset({"x-carrier-ref", "accept-language"}),  # lower-cased
        tls_name="*.carrier.example.com",
    )
    assert config.trunks["psap"].targets == ("sip:psap.example.org",)
    assert config.trunks["psap"].sources == ()


def test_every_valid_fixture_loads() -> None:
    good = sorted(DATA.glob("good_*.yaml"))
    assert len(good) >= 3
    for path in good:
        assert load_config(str(path)).trunks


@pytest.mark.parametrize(
    ("text", "check"),
    [
        # an empty section means its defaults; metrics: null (or empty) turns metrics off
        ("sip:\ncdr: {}\n", lambda c: c.sip == SipTimers() and c.cdr == CdrConfig()),
        ("metrics: null\n", lambda c: c.metrics is None),
        ("metrics:\n", lambda c: c.metrics is None),
        # numbers where a float is expected, YAML integer forms
        ("drain_seconds: 0\n", lambda c: c.drain_seconds == 0.0),
        ("limits: {max_calls: 0x10, source_rps: 1_000}\n", lambda c: c.limits.max_calls == 16),
        ("log_level: warning\n", lambda c: c.log_level == "warning"),
        # an address alone (as in the trunk below) is a host network
        ("", lambda c: c.trunks["pbx"].sources == (net("127.0.0.2/32"),)),
    ],
)
def test_valid_variants(text: str, check: Callable[[Config], bool]) -> None:
    config = load_config_text(text + "trunks: {pbx: {sources: [127.0.0.2]}}\n", "t.yaml")
    assert check(config)


def test_anchors_and_aliases_are_read() -> None:
    text = (
        "trunks:\n"
        "  a: {sources: [192.0.2.1], route_to: b, numbering: &nl {country_code: '31'}}\n"
        "  b: {sources: [192.0.2.2], route_to: a, numbering: *nl}\n"
    )
    config = load_config_text(text, "t.yaml")
    assert config.trunks["b"].numbering == Numbering(country_code="31")


# --- errors: one line, FILE:LINE: field.path: message ------------------------------------


def test_every_broken_fixture_is_in_the_table() -> None:
    assert {p.name for p in DATA.glob("bad_*.yaml")} == set(BAD)
    assert len(BAD) >= 15


@pytest.mark.parametrize("name", sorted(BAD))
def test_broken_fixture(name: str) -> None:
    line, field, word = BAD[name]
    path = str(DATA / name)
    exc = _error(lambda: load_config(path))
    assert (exc.source, exc.line, exc.field) == (path, line, field)
    assert word in exc.message
    assert str(exc) == f"{path}:{line}: {field}: {exc.message}"
    assert "\n" not in str(exc)


def test_cidr_error_line_format() -> None:
    path = str(DATA / "bad_cidr.yaml")
    exc = _error(lambda: load_config(path))
    assert str(exc) == f"{path}:12: trunks.customers.sources[1]: invalid CIDR '10.0.0.0/33'"


TRUNK = "trunks: {pbx: {sources: [127.0.0.2/32]}}\n"


@pytest.mark.parametrize(
    ("text", "line", "field", "word"),
    [
        ("", 1, "trunks", "required field missing"),
        ("- a\n", 1, "(root)", "expected a mapping, got a list"),
        ("trunks: {}\n", 1, "trunks", "at least one trunk"),
        ("listen: []\n" + TRUNK, 1, "listen", "at least one listen entry"),
        ("trunks: {a: {sources: [192.0.2.1]}, a: {}}\n", 1, "trunks.a", "duplicate key"),
        ("cdr:\n  path: a\n  path: b\n" + TRUNK, 3, "cdr.path", "first at line 2"),
        ("<<: {log_level: info}\n" + TRUNK, 1, "(root)", "merge keys"),
        ("1: 2\n" + TRUNK, 1, "(root)", "keys must be strings"),
        ("source: x.yaml\n" + TRUNK, 1, "source", "unknown field"),
        ("trunks: {pbx: {name: x, sources: [192.0.2.1]}}\n", 1, "trunks.pbx.name", "unknown"),
        (TRUNK + "limits: {max_calls: 1.5}\n", 2, "limits.max_calls", "expected an integer"),
        (TRUNK + "limits: {max_calls: -1}\n", 2, "limits.max_calls", "0 or more"),
        (TRUNK + "limits: {emergency_max_calls: 0}\n", 2, "limits.emergency_max_calls", "1"),
        (TRUNK + "drain_seconds: .inf\n", 2, "drain_seconds", "finite"),
        (TRUNK + "sip: {t1: !!int abc}\n", 2, "sip.t1", "expected a number"),
        (TRUNK + "sip: {t1: true}\n", 2, "sip.t1", "boolean"),
        (TRUNK + "sip: {t1: 1, t2: 0.5}\n", 2, "sip.t2", "less than t1"),
        (TRUNK + "sip: {session_expires: 60}\n", 2, "sip.session_expires", "min_se"),
        (TRUNK + "sip: {min_se: 30}\n", 2, "sip.min_se", "RFC 4028"),
        (TRUNK + "sip: {session_expires: 172800}\n", 2, "sip.session_expires", "a day"),
        (TRUNK + "sip: {min_se: 100000}\n", 2, "sip.min_se", "86400"),
        (TRUNK + "identity_domain: sip example\n", 2, "identity_domain", "host name"),
        (TRUNK + "clir_codes: {present: ''}\n", 2, "clir_codes.present", "digits"),
        (TRUNK + "emergency_numbers: ['11a']\n", 2, "emergency_numbers[0]", "digits"),
        (TRUNK + "rtpengine: {when_down: off}\n", 2, "rtpengine.when_down", "boolean 'off'"),
        (TRUNK + "rtpengine: {control: ['udp:[::g]:22']}\n", 2, "rtpengine.control[0]", "udp:"),
        (TRUNK + "rtpengine: {control: ['udp:h:0']}\n", 2, "rtpengine.control[0]", "udp:"),
        (TRUNK + "rtpengine: {control: ['udp:h:65536']}\n", 2, "rtpengine.control[0]", "udp:"),
        (TRUNK + "rtpengine: {control: ['udp:h']}\n", 2, "rtpengine.control[0]", "udp:"),
        (TRUNK + "rtpengine: {control: ['udp:::1:22']}\n", 2, "rtpengine.control[0]", "udp:"),
        (TRUNK + "rtpengine: {media_timeout: -1}\n", 2, "rtpengine.media_timeout", "0 or more"),
        (TRUNK + "rtpengine: {media_timeout: x}\n", 2, "rtpengine.media_timeout", "a number"),
        (TRUNK + "rtpengine: {media_timeout: .inf}\n", 2, "rtpengine.media_timeout", "finite"),
        (TRUNK + "rtpengine: {media_timeout: true}\n", 2, "rtpengine.media_timeout", "boolean"),
        (TRUNK + "cdr: {sink: kafka}\n", 2, "cdr.sink", "one of file, postgres"),
        (TRUNK + "metrics: {port: 0}\n", 2, "metrics.port", "out of range"),
        (
            "listen: [{transport: udp, address: 127.0.0.1, port: 5060, cert: a}]\n" + TRUNK,
            1,
            "listen[0].cert",
            "only used with transport tls",
        ),
        (
            "listen: [{transport: tcp, address: 127.0.0.1, port: 5060, ca: ca.crt}]\n" + TRUNK,
            1,
            "listen[0].ca",
            "only used with transport tls",
        ),
        (
            "listen: [{transport: tls, address: 127.0.0.1, port: 5061, cert: a, key: b}]\n"
            "trunks: {pbx: {sources: [127.0.0.2/32], tls_name: sbc.example.net}}\n",
            1,
            "listen[0].ca",
            "required: it serves trunk 'pbx', which has tls_name",
        ),
        (
            "listen: [{transport: tls, address: 127.0.0.1, port: 5061, cert: a, key: b, ca: c,"
            " trunks: [b]}]\n"
            "trunks: {pbx: {sources: [127.0.0.2/32], tls_name: sbc.example.net},"
            " b: {sources: [127.0.0.3/32]}}\n",
            2,
            "trunks.pbx.tls_name",
            "needs a tls listen entry serving this trunk",
        ),
        (
            "listen: [{transport: tls, address: 127.0.0.1, port: 5061, cert: a, key: b, ca: c}]\n"
            "trunks: {pbx: {sources: [127.0.0.2/32], tls_name: 192.0.2.7}}\n",
            2,
            "trunks.pbx.tls_name",
            "not an IP address",
        ),
        (
            "listen: [{transport: tls, address: 127.0.0.1, port: 5061, cert: a, key: b, ca: c}]\n"
            "trunks: {pbx: {targets: ['sips:a.test', 'sip:b.test;transport=TLS', 'sip:c.test'],"
            " tls_name: a.test}}\n",
            2,
            "trunks.pbx.targets[2]",
            "reached over TLS only",
        ),
        ("listen: [{transport: udp, address: '::1', port: 5060, trunks: x}]\n", 1, "", "list"),
        ("listen: [{transport: udp, address: '::1', port: 5060, trunks: []}]\n", 1, "", "no trunk"),
        (
            "trunks: {a: {sources: [192.0.2.1], numbering: {national_prefix: '0',"
            " international_prefix: '0'}}}\n",
            1,
            "trunks.a.numbering.international_prefix",
            "differ",
        ),
        ("trunks: {a: {sources: [192.0.2.1], allowed_cli: ['']}}\n", 1, "", "never match"),
        ("trunks: {a: {sources: [192.0.2.1], allowed_cli: ['+']}}\n", 1, "", "never match"),
        ("trunks: {a: {sources: [192.0.2.1], allowed_cli: ['3120*']}}\n", 1, "", "never match"),
        ("trunks: {a: {sources: [192.0.2.1], permanent_numbers: ['+0123456']}}\n", 1, "", "E.164"),
        ("trunks: {a: {sources: [192.0.2.1], targets: ['sip:h:99999']}}\n", 1, "", "URI"),
        ("trunks: {a: {sources: [192.0.2.1], targets: ['http://h']}}\n", 1, "", "URI"),
        ("trunks: {a: {sources: [192.0.2.1], header_allowlist: ['X Y']}}\n", 1, "", "header"),
        ("trunks: {a: {sources: [192.0.2.1], tls_name: 'a..b'}}\n", 1, "", "host name"),
        ("trunks: {a: {sources: [192.0.2.1], trusted: 'yes'}}\n", 1, "", "true or false"),
        ("trunks: {a: {sources: [192.0.2.1], cli_policy: drop}}\n", 1, "", "replace, reject"),
        ("trunks: {a: {sources: [192.0.2.1], media: relay}}\n", 1, "", "pass, anchor"),
        ("trunks: {a: {sources: [not-an-ip]}}\n", 1, "trunks.a.sources[0]", "invalid CIDR"),
        ("trunks: {a: {sources: [192.0.2.1], limits: {cps: -5}}}\n", 1, "", "0 or more"),
        ("trunks: {a: {sources: [192.0.2.1], numbering: {country_code: 31}}}\n", 1, "", "quote"),
        ('trunks:\n  "a\\nb": {}\n', 2, "trunks.a\nb", "invalid name"),  # str() escapes
        ("trunks: [pbx]\n", 1, "trunks", "expected a mapping"),
        ("trunks: {a: [192.0.2.1]}\n", 1, "trunks.a", "expected a mapping"),
        ("listen: {transport: udp}\n" + TRUNK, 1, "listen", "expected a list"),
        ("trunks:\n\tpbx: {}\n", 2, "(yaml)", "'\\t'"),
        ("a: 1\n---\nb: 2\n", 2, "(yaml)", "another document"),
        ("trunks: {a: *nothing}\n", 1, "(yaml)", "undefined alias"),
        ("trunks: {a: 'x}\n", 2, "(yaml)", "end of stream"),
    ],
)
def test_error(text: str, line: int, field: str, word: str) -> None:
    exc = _error(lambda: load_config_text(text, "t.yaml"))
    assert exc.line == line, str(exc)
    if field:
        assert exc.field == field, str(exc)
    assert word in exc.message, str(exc)
    assert str(exc).startswith(f"t.yaml:{line}: ")
    assert "\n" not in str(exc)


def test_first_error_in_file_order_wins() -> None:
    text = "limits: {max_calls: -1}\ntrunks: {pbx: {sources: [10.0.0.0/33]}}\n"
    assert _error(lambda: load_config_text(text, "t.yaml")).field == "limits.max_calls"
    text = (
        "listen: [{transport: udp, address: 127.0.0.1, port: 5060, trunks: [nope]}]\n"
        "trunks: {pbx: {sources: [192.0.2.1], route_to: nope}}\n"
    )
    assert _error(lambda: load_config_text(text, "t.yaml")).field == "listen[0].trunks[0]"


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    exc = _error(lambda: load_config(path))
    assert str(exc) == f"{path}:0: (file): cannot read: No such file or directory"
    exc = _error(lambda: load_config(str(tmp_path)))
    assert (exc.line, exc.field) == (0, "(file)")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"# caf\xc3\xa9\ntrunks:\n  caf\xe9: {}\n")
    exc = _error(lambda: load_config(str(path)))
    assert (exc.line, exc.field, exc.message) == (3, "(file)", "not UTF-8 text")


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + REFERENCE.read_bytes())
    assert list(load_config(str(path)).trunks) == ["customers", "pbx"]


def test_config_error_survives_pickling() -> None:
    exc = ConfigError("a.yaml", 3, "cdr.sink", "bad")
    again = pickle.loads(pickle.dumps(exc))
    assert str(again) == str(exc) == "a.yaml:3: cdr.sink: bad"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="abcdeprstu :-[]{}#'\"\n\t0123456789./*+&!", max_size=120))
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    try:
        load_config_text(text, "t.yaml")
    except ConfigError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_damaged_reference_gives_a_config_or_a_config_error(data: st.DataObject) -> None:
    lines = REFERENCE.read_text().splitlines(keepends=True)
    i = data.draw(st.integers(0, len(lines) - 1))
    replacement = data.draw(st.sampled_from(["", "  x: 1\n", "- \n", "trunks:\n", "  :\n"]))
    text = "".join([*lines[:i], replacement, *lines[i + 1 :]])
    try:
        load_config_text(text, "t.yaml")
    except ConfigError as exc:
        assert 1 <= exc.line <= len(lines) + 1


# --- match_trunk (SPEC §2) --------------------------------------------------------------


def test_match_trunk_reference() -> None:
    config = load_config(str(REFERENCE))

    def name(listen: int, addr: str) -> str | None:
        trunk = config.match_trunk(listen, ip(addr))
        return trunk.name if trunk else None

    assert name(0, "127.0.0.3") == "customers"
    assert name(1, "127.0.0.2") == "pbx"
    assert name(0, "127.0.0.4") is None  # unknown: 403
    assert name(0, "::ffff:127.0.0.2") == "pbx"  # from a dual-stack socket
    assert name(0, "::1") is None


def test_match_trunk_listen_restricted_and_ipv6() -> None:
    config = load_config(str(DATA / "good_load_balancer.yaml"))

    def name(listen: int, addr: str) -> str | None:
        trunk = config.match_trunk(listen, ip(addr))
        return trunk.name if trunk else None

    # the load balancer's address belongs to whichever trunk the port serves
    assert name(0, "10.0.0.5") == "pbx"
    assert name(1, "10.0.0.5") == "customers"
    assert name(2, "10.0.0.5") is None
    # IPv6: pbx's /48 lies inside carrier's /32, on disjoint listen entries
    assert name(0, "2001:db8:1::5") == "pbx"
    assert name(1, "2001:db8:1::5") == "carrier"
    assert name(2, "2001:db8:ffff::1") == "carrier"
    assert name(0, "2001:db8:ffff::1") is None
    assert name(1, "192.0.2.77") == "carrier"


def test_match_trunk_longest_prefix() -> None:
    # built by hand: the loader refuses these overlaps on a shared listen entry
    wide = Trunk("wide", sources=(net("10.0.0.0/8"), net("2001:db8::/32")))
    narrow = Trunk("narrow", sources=(net("10.1.0.0/16"), net("2001:db8:1::/48")))
    host = Trunk("host", sources=(net("10.1.2.3/32"),))
    config = Config("t", DEFAULT_LISTEN, {"wide": wide, "narrow": narrow, "host": host})
    assert config.match_trunk(0, ip("10.1.2.3")) is host
    assert config.match_trunk(0, ip("10.1.2.4")) is narrow
    assert config.match_trunk(0, ip("10.2.0.1")) is wide
    assert config.match_trunk(0, ip("2001:db8:1::1")) is narrow
    assert config.match_trunk(0, ip("2001:db8:2::1")) is wide
    assert config.match_trunk(0, ip("11.0.0.1")) is None
