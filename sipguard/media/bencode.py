"""Bencode, the encoding of rtpengine's ng control protocol: strict, bounded, sans-IO.

The four kinds of value (BitTorrent BEP 3, as rtpengine uses them):

=========== ========================= ====================================
kind        wire                      Python
=========== ========================= ====================================
byte string ``<length>:<bytes>``      ``str`` (decoded; see below) / ``bytes`` in
integer     ``i<decimal>e``           ``int`` (not ``bool``)
list        ``l<values>e``            ``list`` (``tuple`` accepted in)
dictionary  ``d<key><value>...e``     ``dict[str, object]``
=========== ========================= ====================================

Byte strings decode to ``str`` as UTF-8 with ``surrogateescape``, so every byte string
that arrives re-encodes to the same bytes, and SDP with a stray Latin-1 byte is still a
string. Dictionary keys are written sorted by their bytes (as the format requires), and
read in any order: rtpengine writes its replies in insertion order. A duplicate key is
an error.

Strictness on decoding: no leading zeros or ``-0`` in an integer or a length, a length
that fits the input, nothing after the one top-level value, at most ``max_depth`` nested
lists and dictionaries, integers of at most 20 digits. Everything else raises
:class:`BencodeError` (a ``ValueError``) with the offset of the fault; nothing else
escapes :func:`decode`, whatever the input. The size of the input is the caller's bound
(one datagram).
"""

from __future__ import annotations

MAX_DEPTH = 32
_MAX_INT_DIGITS = 20


class BencodeError(ValueError):
    """Input that is not one well-formed bencoded value, or a value that cannot be encoded."""


def encode(value: object) -> bytes:
    """The bencoding of ``value`` (dict with str/bytes keys, list, tuple, int, str, bytes)."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _key_bytes(key: object) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8", "surrogateescape")
    if isinstance(key, bytes):
        return key
    raise BencodeError(f"dictionary key must be str or bytes, not {type(key).__name__}")


def _first(item: tuple[bytes, object]) -> bytes:
    return item[0]


def _ascii_keys(value: dict[object, object]) -> bool:
    """Keys all ASCII strings: then ``sorted`` orders them as their bytes (the fast path)."""
    return all(isinstance(key, str) and key.isascii() for key in value)


def _encode(value: object, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError("value nested too deeply")
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
        out.append(b"%d:%b" % (len(raw), raw))
    elif isinstance(value, bytes):
        out.append(b"%d:%b" % (len(value), value))
    elif isinstance(value, bool):
        raise BencodeError("bool has no bencoding (use an int or a string)")
    elif isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        if _ascii_keys(value):
            # distinct str keys cannot repeat, and ASCII sorts as its bytes do
            for key in sorted(value):
                out.append(b"%d:%b" % (len(key), key.encode("ascii")))
                _encode(value[key], out, depth + 1)
        else:
            items = sorted(((_key_bytes(k), v) for k, v in value.items()), key=_first)
            last: bytes | None = None
            for raw_key, item in items:
                if raw_key == last:
                    raise BencodeError(f"duplicate dictionary key {raw_key!r}")
                last = raw_key
                out.append(b"%d:%b" % (len(raw_key), raw_key))
                _encode(item, out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"{type(value).__name__} has no bencoding")


def decode(data: bytes, max_depth: int = MAX_DEPTH) -> object:
    """The one value ``data`` holds; :class:`BencodeError` on anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BencodeError(f"bencode input must be bytes, not {type(data).__name__}")
    buf = bytes(data)
    if not buf:
        raise BencodeError("empty input")
    reader = _Reader(buf, max_depth)
    value = reader.value(0)
    if reader.pos != len(buf):
        raise BencodeError(f"trailing bytes at offset {reader.pos}")
    return value


def decode_dict(data: bytes, max_depth: int = MAX_DEPTH) -> dict[str, object]:
    """:func:`decode` for input that must be a dictionary (every ng message is one)."""
    value = decode(data, max_depth)
    if not isinstance(value, dict):
        raise BencodeError("not a dictionary")
    return value


class _Reader:
    __slots__ = ("buf", "max_depth", "pos")

    def __init__(self, buf: bytes, max_depth: int) -> None:
        self.buf = buf
        self.pos = 0
        self.max_depth = max_depth

    def _fail(self, what: str) -> BencodeError:
        return BencodeError(f"{what} at offset {self.pos}")

    def _digits(self, end: int, what: str) -> int:
        """The decimal number in ``buf[pos:end]`` (strict), pos moved past ``end``."""
        text = self.buf[self.pos : end]
        negative = text.startswith(b"-")
        digits = text[1:] if negative else text
        if (
            not digits
            or len(digits) > _MAX_INT_DIGITS
            or not digits.isdigit()
            or (digits[0] == 0x30 and (len(digits) > 1 or negative))
        ):
            raise self._fail(f"malformed {what}")
        self.pos = end + 1
        number = int(digits)
        return -number if negative else number

    def _string(self) -> bytes:
        buf = self.buf
        pos = self.pos
        colon = buf.find(b":", pos, pos + _MAX_INT_DIGITS + 1)
        if colon < 0:
            raise self._fail("malformed string length")
        digits = buf[pos:colon]
        # isdigit: ASCII digits only, not empty (so no sign either); no leading zero
        if not digits.isdigit() or (digits[0] == 0x30 and colon - pos > 1):
            raise self._fail("malformed string length")
        start = colon + 1
        end = start + int(digits)
        if end > len(buf):
            raise self._fail("string longer than the input")
        self.pos = end
        return buf[start:end]

    def value(self, depth: int) -> object:
        if self.pos >= len(self.buf):
            raise self._fail("truncated input")
        lead = self.buf[self.pos]
        if 0x30 <= lead <= 0x39:
            return self._string().decode("utf-8", "surrogateescape")
        if lead == 0x69:  # "i"
            end = self.buf.find(b"e", self.pos + 1, self.pos + _MAX_INT_DIGITS + 3)
            if end < 0:
                raise self._fail("malformed integer")
            self.pos += 1
            return self._digits(end, "integer")
        if lead in (0x6C, 0x64):  # "l", "d"
            if depth >= self.max_depth:
                raise self._fail("nested too deeply")
            self.pos += 1
            return self._list(depth) if lead == 0x6C else self._dict(depth)
        raise self._fail(f"unexpected byte {bytes([lead])!r}")

    def _list(self, depth: int) -> list[object]:
        items: list[object] = []
        while True:
            if self.pos >= len(self.buf):
                raise self._fail("unterminated list")
            if self.buf[self.pos] == 0x65:  # "e"
                self.pos += 1
                return items
            items.append(self.value(depth + 1))

    def _dict(self, depth: int) -> dict[str, object]:
        items: dict[str, object] = {}
        while True:
            if self.pos >= len(self.buf):
                raise self._fail("unterminated dictionary")
            lead = self.buf[self.pos]
            if lead == 0x65:  # "e"
                self.pos += 1
                return items
            if not 0x30 <= lead <= 0x39:
                raise self._fail("dictionary key is not a string")
            key = self._string().decode("utf-8", "surrogateescape")
            if key in items:
                raise self._fail(f"duplicate dictionary key {key!r}")
            items[key] = self.value(depth + 1)
