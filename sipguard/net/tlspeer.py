"""Which certificate name a TLS connection must prove, and whether one may carry a flow.

Sans-IO: the driver gathers the facts (the name the core routed a target for, the
trunk whose sources hold the peer, what a connection's certificate proved) and these
decide. The names a certificate holds and the matching of a ``tls_name`` against them
are :mod:`sipguard.sip.tlsnames` (RFC 5922).
"""

from __future__ import annotations

from sipguard.config.model import Trunk
from sipguard.sip.tlsnames import name_matches


def expected_name(routed: str | None, source_trunk: Trunk | None) -> str | None:
    """The ``tls_name`` a TLS connection to a peer must find in the server's certificate:
    ``routed``, the name of the trunk whose configured target the peer is, else (an
    in-dialog peer: a Request-URI or redirect route, which lie in its trunk's sources)
    that of ``source_trunk``, the trunk whose sources hold the peer; or None."""
    if routed is not None:
        return routed
    return source_trunk.tls_name if source_trunk is not None else None


def server_name(expected: str | None) -> str | None:
    """The SNI to send for ``expected``: the name itself, but none for a ``*.`` name,
    which is no host name for the TLS library (the certificate is checked by
    :func:`proves` once connected)."""
    if expected is None or expected.startswith("*."):
        return None
    return expected


def proves(expected: str | None, names: frozenset[str]) -> bool:
    """Whether a peer whose verified certificate holds ``names`` may be talked to, where
    ``expected`` is the name it must hold (None: any peer the CAs verified)."""
    return expected is None or name_matches(expected, names)


def may_carry(
    expected: str | None,
    flow_local: int,
    conn_local: int,
    conn_expects: str | None,
    conn_names: frozenset[str],
) -> bool:
    """May a TLS connection found by a flow's address carry it? Where the next hop must
    hold ``expected``: only a connection from the flow's own listen entry (verified
    against that entry's CAs) that checks the name (opened by us for it:
    ``conn_expects``) or whose verified certificate holds it (RFC 5923 §6: reuse only once
    the certificate has proved the name)."""
    if expected is None:
        return True
    if conn_local != flow_local:  # verified against another entry's CAs
        return False
    return conn_expects == expected or proves(expected, conn_names)
