"""The names a TLS peer's certificate proves, and a trunk's ``tls_name`` against them.

A trunk may require that its peers hold a certificate for a name (SPEC §2:
``tls_name``), verified against the ``ca`` of the TLS listen entry that the connection
came in on (or went out from). Which names a certificate holds follows RFC 5922 §7.1:
the ``sip:`` URIs and the DNS names of its subjectAltName, and its subject's common
name only when it has neither.

``tls_name`` is one name, or ``*.`` and a domain: any single label in front of that
domain (``*.carrier.example`` matches ``sbc1.carrier.example``, neither
``carrier.example`` nor ``a.b.carrier.example``). A certificate's own wildcard
names prove nothing here (RFC 5922 §7.2): they are compared as text, so only a
``tls_name`` written the same way could match them, and the loader never lets one
through (a ``tls_name`` is a host name, or ``*.`` and one).
"""

from __future__ import annotations

from typing import Any


def certificate_names(peercert: dict[str, Any] | None) -> frozenset[str]:
    """The names a verified certificate (``SSLSocket.getpeercert()``) holds, lower case."""
    if not peercert:
        return frozenset()
    names: set[str] = set()
    if "subjectAltName" in peercert:  # then the common name is not an identity (§7.1)
        for kind, value in peercert["subjectAltName"]:
            if kind == "DNS":
                names.add(str(value).lower())
            elif kind == "URI" and str(value)[:4].lower() == "sip:":
                # sip:example.net: the domain, without port or parameters (§7.2); one
                # with a user part names a user, not a domain
                host = str(value)[4:].split(";", 1)[0]
                if "@" not in host and not host.startswith("["):
                    names.add(host.rsplit(":", 1)[0].lower())
        return frozenset(names)
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.add(str(value).lower())
    return frozenset(names)


def name_matches(tls_name: str, names: frozenset[str]) -> bool:
    """Whether a certificate holding ``names`` proves ``tls_name`` (see the module)."""
    wanted = tls_name.lower()
    if not wanted.startswith("*."):
        return wanted in names
    domain = wanted[1:]  # ".carrier.example"
    for name in names:
        label, dot, rest = name.partition(".")
        if dot and label and label != "*" and "." + rest == domain:
            return True
    return False
