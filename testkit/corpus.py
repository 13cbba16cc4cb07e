"""The test material written by others (``../shared/corpus``), read for the attack tests.

- :func:`rfc4475_messages`: every RFC 4475 torture message, exact bytes, with its class
  (``valid``/``invalid``) from the folder's ``index.tsv``;
- :func:`protos_cases`: the 4,527 PROTOS c07-sip INVITE cases (``cases.tar.xz``, each two
  length-prefixed PDUs: the request and its CANCEL), their placeholders filled in the way
  the folder's README says, with the sender's address and port of the caller's choice.

Data only: nothing here sends anything (the replay test and the fuzz targets do).
"""

from __future__ import annotations

import csv
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
RFC4475 = CORPUS / "rfc4475"
RFC5118 = CORPUS / "rfc5118"
PROTOS = CORPUS / "protos-c07-sip"


def read_index(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@dataclass(frozen=True)
class Message:
    name: str
    data: bytes
    valid: bool


def rfc4475_messages() -> list[Message]:
    """Every RFC 4475 message (49), in the index's order."""
    return [
        Message(row["name"], (RFC4475 / row["file"]).read_bytes(), row["class"] == "valid")
        for row in read_index(RFC4475 / "index.tsv")
    ]


def rfc5118_messages() -> list[Message]:
    """The RFC 5118 IPv6 messages, CRLF-normalised (``wire/``)."""
    out = []
    for row in read_index(RFC5118 / "index.tsv"):
        path = RFC5118 / row["wire_file"]
        out.append(Message(row["name"], path.read_bytes(), row["class"] == "valid"))
    return out


def protos_pdus(raw: bytes) -> list[bytes]:
    """``<len> SP <pdu>`` repeated (README: the request, then the teardown)."""
    out, i = [], 0
    while i < len(raw):
        sp = raw.index(b" ", i)
        n = int(raw[i:sp])
        out.append(raw[sp + 1 : sp + 1 + n])
        i = sp + 1 + n
    return out


def protos_fill(pdu: bytes, host: str, port: int, target: str, call_id: str) -> bytes:
    """The README's placeholders filled in: ``host:port`` is the sender, ``target`` the
    user@host of the Request-URI and To, ``call_id`` the Call-ID (and branch)."""
    subs = (
        (b"<Teardown-Method>", b"CANCEL"),
        (b"<From-Address>", host.encode()),
        (b"<From-IP>", host.encode()),
        (b"<Local-Port>", str(port).encode()),
        (b"<Branch-ID>", call_id.encode()),
        (b"<Call-ID>", call_id.encode()),
        (b"<CSeq>", b"1"),
        (b"<From>", f"alice@{host}".encode()),
        (b"<To>", target.encode()),
    )
    for placeholder, value in subs:
        pdu = pdu.replace(placeholder, value)
    # after everything else: the byte length of the body after the first CRLFCRLF
    end = pdu.find(b"\r\n\r\n")
    body_len = len(pdu) - (end + 4) if end >= 0 else 0
    return pdu.replace(b"<Content-Length>", str(body_len).encode())


@dataclass(frozen=True)
class ProtosCase:
    case: str  # "0000000"
    request: bytes  # with placeholders
    teardown: bytes

    def filled(self, host: str, port: int, target: str, tag: str = "") -> tuple[bytes, bytes]:
        """(request, CANCEL) with the placeholders filled in; ``tag`` makes the Call-ID
        and branch unique per replay."""
        call_id = f"protos{self.case}{tag}"
        return (
            protos_fill(self.request, host, port, target, call_id),
            protos_fill(self.teardown, host, port, target, call_id),
        )


def protos_cases() -> Iterator[ProtosCase]:
    """The 4,527 cases, in case order."""
    with tarfile.open(PROTOS / "cases.tar.xz") as tar:
        for member in sorted((m for m in tar if m.isfile()), key=lambda m: m.name):
            f = tar.extractfile(member)
            assert f is not None
            request, teardown = protos_pdus(f.read())
            yield ProtosCase(Path(member.name).name, request, teardown)
