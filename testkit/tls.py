"""The test certificates (``tests/data/tls``, made by ``tools/make_test_certs.sh``) and
the listen entries that serve them."""

from __future__ import annotations

from pathlib import Path

from testkit.sipp import SIPGUARD_IP

TLS = Path(__file__).resolve().parents[1] / "tests" / "data" / "tls"


def listens(port: int) -> list[dict[str, object]]:
    """UDP, and TLS with sipguard's certificate and the test CA, both on ``port``."""
    return [
        {"transport": "udp", "address": SIPGUARD_IP, "port": port},
        {
            "transport": "tls",
            "address": SIPGUARD_IP,
            "port": port,
            "cert": str(TLS / "sipguard.crt"),
            "key": str(TLS / "sipguard.key"),
            "ca": str(TLS / "ca.crt"),
        },
    ]
