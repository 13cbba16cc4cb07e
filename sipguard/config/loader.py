"""Read the YAML configuration into the values of :mod:`sipguard.config.model` (SPEC §5).

This is sipguard's only YAML reader. The text is composed into PyYAML's node tree, which
keeps the line of every key and value, and one walker turns the tree into the model's
frozen dataclasses, driven by their type hints:

- a mapping becomes a dataclass: unknown, duplicate and missing keys are errors, and an
  empty section (``sip:`` with everything commented out) means all defaults;
- a list becomes a tuple or a frozenset, the ``trunks`` mapping a dict of named trunks;
- a scalar must have the YAML type of its field: ``true`` is not an integer and an
  unquoted ``00`` is not a string;
- :data:`_CHECKS` holds the rules on one value (applied to each item of a list),
  :data:`_OBJECT_CHECKS` the rules between fields of one object, including the rules of
  the whole configuration (``route_to`` names a trunk, sources do not overlap, ...).

The walk stops at the first error in file order; the rules between fields of an object
are checked once all its fields are valid. A :class:`ConfigError` is one line,
``FILE:LINE: field.path: message``, which is what ``sipguard check-config`` prints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import ipaddress
import math
import re
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, NoReturn, Union, get_args, get_origin, get_type_hints

import yaml

from sipguard.config.model import (
    DEFAULT_LISTEN,
    MAX_SESSION_INTERVAL,
    CdrConfig,
    ClirCodes,
    Config,
    Dns,
    IPNetwork,
    Limits,
    Listen,
    Metrics,
    Numbering,
    RtpEngine,
    SipTimers,
    Trunk,
    TrunkLimits,
    dns_server_address,
)
from sipguard.media.ng import parse_control
from sipguard.policy.numbers import cli_pattern_can_match, is_e164

__all__ = ["ConfigError", "load_config", "load_config_text"]


class ConfigError(Exception):
    """An invalid configuration. ``str()`` is one line: ``FILE:LINE: field.path: message``.

    ``line`` is 1-based; it is 0 when the file could not be read at all.
    """

    def __init__(self, source: str, line: int, field: str, message: str) -> None:
        super().__init__(source, line, field, message)
        self.source = source
        self.line = line
        self.field = field
        self.message = message

    def __str__(self) -> str:
        text = f"{self.source}:{self.line}: {self.field}: {self.message}"
        return text.replace("\r", "\\r").replace("\n", "\\n")


def load_config(path: str) -> Config:
    """Read and validate the configuration file at ``path``; raise :class:`ConfigError`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(path, 0, "(file)", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(path, line, "(file)", "not UTF-8 text") from None
    return load_config_text(text, path)


def load_config_text(text: str, source: str = "<text>") -> Config:
    """Validate configuration ``text``; ``source`` names it in errors and in the result."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(source, *_yaml_problem(exc)) from None
    except yaml.YAMLError as exc:  # pragma: no cover - PyYAML marks its syntax errors
        raise ConfigError(source, 0, "(yaml)", str(exc)) from None
    config: Config = _Walker(source).object(root, Config, "", {"source": source})
    return config


def _yaml_problem(exc: yaml.MarkedYAMLError) -> tuple[int, str, str]:
    mark = exc.problem_mark or exc.context_mark
    message = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem:
        where = exc.context_mark
        other_line = where is not None and mark is not None and where.line != mark.line
        at = f" at line {where.line + 1}" if where is not None and other_line else ""
        message = f"{message} ({exc.context}{at})"
    return (mark.line + 1 if mark is not None else 0), "(yaml)", message


# --- the walker ----------------------------------------------------------------------

_TAG = "tag:yaml.org,2002:"
_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_SCALAR_TAGS = {bool: ("bool",), int: ("int",), float: ("int", "float"), str: ("str",)}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

_Pair = tuple[str, yaml.Node, yaml.Node]  # a mapping entry: key, key node, value node
Check = Callable[[Any], str | None]  # a rule on one value: None, or what is wrong
Problems = Callable[[Any], Iterable[tuple[str, str]]]  # rules on an object: (field, message)


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_null(node: yaml.Node | None) -> bool:
    return node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _TAG + "null")


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    kind = node.tag.removeprefix(_TAG)
    if kind == "null":
        return "null"
    names = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}
    return f"{names.get(kind, kind)} {node.value!r}"


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


class _Walker:
    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[str, int] = {}  # field path -> line of its key (or list item)
        self._constructor = yaml.constructor.SafeConstructor()

    def fail(self, where: yaml.Node | int | None, path: str, message: str) -> NoReturn:
        line = where if isinstance(where, int) else _line(where)
        raise ConfigError(self.source, line, path or "(root)", message)

    def object(
        self, node: yaml.Node | None, cls: type, path: str, fixed: dict[str, Any] | None = None
    ) -> Any:
        """A dataclass from a mapping node; ``fixed`` fields are not read from YAML."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in (fixed or {})}
        kwargs: dict[str, Any] = dict(fixed or {})
        for key, key_node, value_node in self.pairs(node, path):
            key_path = _join(path, key)
            if key not in fields:
                hint = difflib.get_close_matches(key, fields, n=1)
                also = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.fail(key_node, key_path, f"unknown field{also}")
            value = self.value(value_node, _hints(cls)[key], key_path, _CHECKS.get((cls, key)))
            kwargs[key] = _TRANSFORMS.get((cls, key), _same)(value)
        for name, f in fields.items():
            if name in kwargs:
                continue
            if (cls, name) in _DEFAULTS:
                kwargs[name] = _DEFAULTS[cls, name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(node, _join(path, name), "required field missing")
        obj = cls(**kwargs)
        problems = [(_join(path, f), msg) for f, msg in _OBJECT_CHECKS.get(cls, _none)(obj)]
        if problems:
            first = min(problems, key=lambda p: self.lines.get(p[0], _line(node)))
            self.fail(self.lines.get(first[0], _line(node)), *first)
        return obj

    def pairs(self, node: yaml.Node | None, path: str) -> Iterator[_Pair]:
        if _is_null(node):  # an empty section: all defaults
            return
        assert node is not None
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, path, f"expected a mapping, got {_describe(node)}")
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                self.fail(key_node, path, "merge keys ('<<') are not supported")
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _TAG + "str":
                self.fail(key_node, path, f"keys must be strings, got {_describe(key_node)}")
            key = str(key_node.value)
            if key in first:
                message = f"duplicate key (first at line {first[key]})"
                self.fail(key_node, _join(path, key), message)
            first[key] = self.lines[_join(path, key)] = _line(key_node)
            yield key, key_node, value_node

    def items(self, node: yaml.Node, path: str) -> Iterator[tuple[str, yaml.Node]]:
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, path, f"expected a list, got {_describe(node)}")
        for i, item in enumerate(node.value):
            self.lines[f"{path}[{i}]"] = _line(item)
            yield f"{path}[{i}]", item

    def value(self, node: yaml.Node, tp: Any, path: str, check: Check | None) -> Any:
        """The value of type ``tp`` at ``node``; ``check`` applies to each scalar in it."""
        origin, args = get_origin(tp), get_args(tp)
        if tp == IPNetwork:
            try:
                value: Any = _network(self.scalar(node, str, path))
            except ValueError as exc:
                self.fail(node, path, str(exc))
        elif origin in (Union, types.UnionType):  # X | None
            if _is_null(node):
                return None
            (inner,) = (a for a in args if a is not type(None))
            return self.value(node, inner, path, check)
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.object(node, tp, path)
        elif origin in (tuple, frozenset):
            items = [self.value(item, args[0], p, check) for p, item in self.items(node, path)]
            return origin(items)
        elif origin is dict:
            trunks: dict[str, Any] = {}
            for key, key_node, item in self.pairs(node, path):
                if not _NAME.fullmatch(key):
                    message = f"invalid name {key!r}: letters, digits, '_' and '-'"
                    self.fail(key_node, _join(path, key), message)
                trunks[key] = self.object(item, args[1], _join(path, key), {"name": key})
            return trunks
        elif origin is Literal:
            value = self.scalar(node, str, path, expected=f"one of {', '.join(args)}")
            if value not in args:
                self.fail(node, path, f"expected one of {', '.join(args)}, got {value!r}")
        else:
            value = self.scalar(node, tp, path)
        problem = check(value) if check is not None else None
        if problem is not None:
            self.fail(node, path, problem)
        return value

    def scalar(self, node: yaml.Node, tp: type, path: str, expected: str = "") -> Any:
        kind = node.tag.removeprefix(_TAG)
        if not isinstance(node, yaml.ScalarNode) or kind not in _SCALAR_TAGS[tp]:
            plain = isinstance(node, yaml.ScalarNode) and node.style is None
            quote = tp is str and not expected and plain and kind not in ("null", "bool")
            hint = " (quote it)" if quote else ""
            expected = expected or _EXPECTED[tp]
            self.fail(node, path, f"expected {expected}, got {_describe(node)}{hint}")
        if tp is str:
            return str(node.value)
        try:
            value = self._constructor.construct_object(node)
        except (ValueError, yaml.YAMLError):
            self.fail(node, path, f"expected {_EXPECTED[tp]}, got {node.value!r}")
        if tp is float:
            value = float(value)
            if not math.isfinite(value):
                self.fail(node, path, f"expected a finite number, got {node.value!r}")
        return value


def _same(value: Any) -> Any:
    return value


def _none(obj: Any) -> Iterable[tuple[str, str]]:
    return ()


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"invalid CIDR {text!r}") from None
        raise ValueError(f"invalid CIDR {text!r} (host bits set)") from None


# --- rules on one value ----------------------------------------------------------------


def _rule(ok: Callable[[Any], bool], message: str) -> Check:
    """A check: ``message`` (formatted with ``v``, the value) when ``ok(v)`` is false."""
    return lambda v: None if ok(v) else message.format(v=v)


def _pattern(regex: str, message: str) -> Check:
    compiled = re.compile(regex)
    return _rule(lambda v: compiled.fullmatch(v) is not None, message)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_HOST = r"(?:(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)|\[(?P<v6>[0-9A-Fa-f:.]+)\])"
_SIP_URI = re.compile(rf"sips?:(?:[^@\s;?]+@)?{_HOST}(?::(?P<port>[0-9]{{1,5}}))?(?:;[^\s;?]+)*")
_RTPENGINE = re.compile(rf"udp:{_HOST}:(?P<port>[0-9]{{1,5}})")
_HOSTNAME = r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME += r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"


def _host_port(regex: re.Pattern[str], text: str) -> bool:
    m = regex.fullmatch(text)
    if m is None or (m["v6"] is not None and not _is_ip(m["v6"])):
        return False
    return m["port"] is None or 1 <= int(m["port"]) <= 65535


def _is_control(text: str) -> bool:
    """``udp:HOST:PORT``, and parsed as the ng client will parse it."""
    if not _host_port(_RTPENGINE, text):
        return False
    try:
        parse_control(text)
    except ValueError:
        return False
    return True


def _is_dns_server(text: str) -> bool:
    try:
        dns_server_address(text)
    except ValueError:
        return False
    return True


_PORT = _rule(lambda v: 1 <= v <= 65535, "port {v} out of range 1-65535")
_NON_NEGATIVE = _rule(lambda v: v >= 0, "must be 0 or more, got {v}")
_POSITIVE = _rule(lambda v: v > 0, "must be more than 0, got {v}")
_AT_LEAST_ONE = _rule(lambda v: v >= 1, "must be at least 1, got {v}")
_NON_EMPTY = _rule(bool, "must not be empty")
_IP = _rule(_is_ip, "invalid IP address {v!r}")
_E164 = _rule(is_e164, "not an E.164 number ('+' and 6 to 15 digits): {v!r}")
_CLI_PATTERN = _rule(
    cli_pattern_can_match,
    "pattern {v!r} can never match an E.164 number ('+', digits, '*' any digits, '?' one)",
)
_DIGITS = _pattern(r"[0-9]*", "digits only, got {v!r}")
_DIALLED_CODE = _pattern(r"[0-9*#]+", "digits, '*' and '#' only, got {v!r}")
_HEADER_NAME = _pattern(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", "invalid header name {v!r}")

_CHECKS: dict[tuple[type, str], Check] = {
    (Listen, "address"): _IP,
    (Listen, "port"): _PORT,
    (Listen, "cert"): _NON_EMPTY,
    (Listen, "key"): _NON_EMPTY,
    (Listen, "ca"): _NON_EMPTY,
    (Metrics, "address"): _IP,
    (Metrics, "port"): _PORT,
    (ClirCodes, "withhold"): _DIALLED_CODE,
    (ClirCodes, "present"): _DIALLED_CODE,
    (CdrConfig, "path"): _NON_EMPTY,
    (CdrConfig, "retention_days"): _AT_LEAST_ONE,
    (CdrConfig, "dsn"): _NON_EMPTY,
    (CdrConfig, "spool_path"): _NON_EMPTY,
    (CdrConfig, "spool_max_bytes"): _NON_NEGATIVE,
    (Limits, "max_calls"): _NON_NEGATIVE,
    (Limits, "emergency_max_calls"): _AT_LEAST_ONE,
    (Limits, "source_rps"): _NON_NEGATIVE,
    (Limits, "overload_queue_kb"): _NON_NEGATIVE,
    (Limits, "unknown_source_budget"): _NON_NEGATIVE,
    (Limits, "refused_cdr_rps"): _NON_NEGATIVE,
    (Limits, "tcp_max_connections"): _AT_LEAST_ONE,
    (Limits, "tcp_max_per_source"): _AT_LEAST_ONE,
    (RtpEngine, "control"): _rule(_is_control, "expected udp:HOST:PORT, got {v!r}"),
    (RtpEngine, "media_timeout"): _NON_NEGATIVE,
    (Dns, "servers"): _rule(_is_dns_server, "expected an IP address or IP:PORT, got {v!r}"),
    (Dns, "refresh_min"): _POSITIVE,
    (Dns, "refresh_max"): _POSITIVE,
    (SipTimers, "t1"): _POSITIVE,
    (SipTimers, "t2"): _POSITIVE,
    (SipTimers, "t4"): _POSITIVE,
    (SipTimers, "target_timeout"): _POSITIVE,
    (SipTimers, "max_call_duration"): _NON_NEGATIVE,
    (SipTimers, "session_expires"): _rule(
        lambda v: 0 <= v <= MAX_SESSION_INTERVAL,
        f"must be from 0 to {MAX_SESSION_INTERVAL} (a day), got {{v}}",
    ),
    (SipTimers, "min_se"): _rule(
        lambda v: 90 <= v <= MAX_SESSION_INTERVAL,
        f"must be from 90 (RFC 4028) to {MAX_SESSION_INTERVAL}, got {{v}}",
    ),
    (SipTimers, "tcp_idle_timeout"): _POSITIVE,
    (SipTimers, "tcp_header_timeout"): _POSITIVE,
    (SipTimers, "max_message_bytes"): _POSITIVE,
    (Numbering, "country_code"): _pattern(r"(?:[1-9][0-9]{0,2})?", "1 to 3 digits, got {v!r}"),
    (Numbering, "national_prefix"): _DIGITS,
    (Numbering, "international_prefix"): _DIGITS,
    (TrunkLimits, "cps"): _NON_NEGATIVE,
    (TrunkLimits, "max_calls"): _NON_NEGATIVE,
    (TrunkLimits, "emergency_max_calls"): _NON_NEGATIVE,
    (TrunkLimits, "emergency_cps"): _NON_NEGATIVE,
    (Trunk, "restricted_numbers"): _E164,
    (Trunk, "permanent_numbers"): _E164,
    (Trunk, "allowed_cli"): _CLI_PATTERN,
    (Trunk, "default_cli"): _E164,
    (Trunk, "targets"): _rule(
        lambda v: _host_port(_SIP_URI, v), "expected a sip: or sips: URI, got {v!r}"
    ),
    (Trunk, "header_allowlist"): _HEADER_NAME,
    (Trunk, "tls_name"): _pattern(rf"(?:\*\.)?{_HOSTNAME}", "invalid host name {v!r}"),
    (Config, "identity_domain"): _pattern(_HOSTNAME, "invalid host name {v!r}"),
    (Config, "emergency_numbers"): _pattern(r"[0-9]{1,15}", "1 to 15 digits, got {v!r}"),
    (Config, "drain_seconds"): _NON_NEGATIVE,
}

_TRANSFORMS: dict[tuple[type, str], Callable[[Any], Any]] = {
    (Trunk, "header_allowlist"): lambda names: frozenset(n.lower() for n in names),
}

_DEFAULTS: dict[tuple[type, str], Any] = {(Config, "listen"): DEFAULT_LISTEN}


# --- rules between fields of one object ----------------------------------------------


def _listen_problems(entry: Listen) -> Iterator[tuple[str, str]]:
    if entry.trunks == ():
        yield "trunks", "an empty list serves no trunk (leave it out to serve every trunk)"
    for name in ("cert", "key"):
        if entry.transport == "tls" and getattr(entry, name) is None:
            yield name, "required with transport tls"
    for name in ("cert", "key", "ca"):
        if entry.transport != "tls" and getattr(entry, name) is not None:
            yield name, "only used with transport tls"


def _cdr_problems(cdr: CdrConfig) -> Iterator[tuple[str, str]]:
    if cdr.sink == "postgres" and cdr.dsn is None:
        yield "dsn", "required with sink postgres"


def _clir_problems(codes: ClirCodes) -> Iterator[tuple[str, str]]:
    if codes.present == codes.withhold:
        yield "present", "must differ from withhold"


def _sip_problems(sip: SipTimers) -> Iterator[tuple[str, str]]:
    if sip.t2 < sip.t1:
        yield "t2", f"must not be less than t1 ({sip.t1:g})"
    if 0 < sip.session_expires < sip.min_se:
        yield "session_expires", f"must be 0 (off) or at least min_se ({sip.min_se})"


def _dns_problems(dns: Dns) -> Iterator[tuple[str, str]]:
    if dns.refresh_max < dns.refresh_min:
        yield "refresh_max", f"must not be less than refresh_min ({dns.refresh_min:g})"


def _numbering_problems(plan: Numbering) -> Iterator[tuple[str, str]]:
    if plan.national_prefix and plan.national_prefix == plan.international_prefix:
        yield "international_prefix", "must differ from national_prefix"


def _trunk_problems(trunk: Trunk) -> Iterator[tuple[str, str]]:
    if not trunk.sources and not trunk.targets:
        yield "sources", "a trunk needs sources, targets or both"


def _no_trunk(name: str, config: Config) -> str:
    hint = difflib.get_close_matches(name, config.trunks, n=1)
    return f"no trunk named {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")


def _config_problems(config: Config) -> Iterator[tuple[str, str]]:
    if not config.listen:
        yield "listen", "at least one listen entry is required"
    if not config.trunks:
        yield "trunks", "at least one trunk is required"
    sockets: dict[tuple[bool, Any, int], int] = {}
    for i, entry in enumerate(config.listen):
        for j, name in enumerate(entry.trunks or ()):
            if name not in config.trunks:
                yield f"listen[{i}].trunks[{j}]", _no_trunk(name, config)
        socket = (entry.transport == "udp", ipaddress.ip_address(entry.address), entry.port)
        if socket in sockets:
            kind = "UDP" if socket[0] else "TCP"
            message = f"{kind} port {entry.port} is already used by listen[{sockets[socket]}]"
            yield f"listen[{i}]", message
        sockets.setdefault(socket, i)
    for name, trunk in config.trunks.items():
        for field in ("route_to", "emergency_route_to"):
            target = getattr(trunk, field)
            if target is not None and target not in config.trunks:
                yield f"trunks.{name}.{field}", _no_trunk(target, config)
        if trunk.media == "anchor" and not config.rtpengine.control:
            yield f"trunks.{name}.media", "anchor needs rtpengine.control addresses"
        if trunk.tls_name is not None:
            serving = [
                i
                for i, e in enumerate(config.listen)
                if e.transport == "tls" and (e.trunks is None or name in e.trunks)
            ]
            if not serving:
                yield f"trunks.{name}.tls_name", "needs a tls listen entry serving this trunk"
            for i in serving:
                if config.listen[i].ca is None:
                    # its peers could never prove the name there, and the connections
                    # opened from it would trust the system's CAs for it
                    yield (
                        f"listen[{i}].ca",
                        f"required: it serves trunk {name!r}, which has tls_name",
                    )
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(trunk.tls_name)
                yield f"trunks.{name}.tls_name", "a certificate name, not an IP address"
            for j, target in enumerate(trunk.targets):
                text = target.lower()
                if not text.startswith("sips:") and ";transport=tls" not in text:
                    yield (
                        f"trunks.{name}.targets[{j}]",
                        "a trunk with tls_name is reached over TLS only: sips: or ;transport=tls",
                    )
    yield from _overlapping_sources(config)


def _overlapping_sources(config: Config) -> Iterator[tuple[str, str]]:
    """Two trunks that share a listen entry must not share a source address (SPEC §2)."""
    served = {
        name: {i for i, e in enumerate(config.listen) if e.trunks is None or name in e.trunks}
        for name in config.trunks
    }
    trunks = list(config.trunks.values())
    for k, later in enumerate(trunks):
        for earlier in trunks[:k]:
            if not served[earlier.name] & served[later.name]:
                continue
            for j, net in enumerate(later.sources):
                for other in earlier.sources:
                    if net.version == other.version and net.overlaps(other):
                        yield (
                            f"trunks.{later.name}.sources[{j}]",
                            f"{net} overlaps {other} of trunk {earlier.name!r} on the same"
                            " listen entry (give each trunk its own listen entry)",
                        )


_OBJECT_CHECKS: dict[type, Problems] = {
    Listen: _listen_problems,
    CdrConfig: _cdr_problems,
    ClirCodes: _clir_problems,
    SipTimers: _sip_problems,
    Dns: _dns_problems,
    Numbering: _numbering_problems,
    Trunk: _trunk_problems,
    Config: _config_problems,
}
