"""Cut a TCP/TLS byte stream into SIP messages by Content-Length (RFC 3261 §18.3).

Bounded: a message (header section plus body) over ``max_message`` bytes is a
:class:`MessageTooLarge` error, after which the connection must be closed; so is a
header section without ``Content-Length``, since a stream cannot be re-synchronised
without it. Each byte is searched once, however the stream is cut.
"""

from __future__ import annotations

import re

from sipguard.sip.errors import MessageTooLarge, SipError

_CLEN_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.I | re.M)


class StreamFramer:
    __slots__ = ("_buf", "_need", "_scan", "max_message", "pings")

    def __init__(self, max_message: int = 65535) -> None:
        self._buf = bytearray()
        self._scan = 0  # bytes of _buf already searched for the end of the header section
        self._need = 0  # once the header section is read: the whole message's length
        self.max_message = max_message
        self.pings = 0  # RFC 5626 CRLFCRLF keep-alives seen; answer each with one CRLF

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the whole messages now complete, in order."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            if not self._need:
                if self._scan == 0:
                    i = 0
                    while buf.startswith(b"\r\n", i):
                        i += 2
                    if i:
                        self.pings += i // 4
                        del buf[:i]
                        continue
                    if buf == b"\r":
                        break  # half a CRLF: wait for the rest
                end = buf.find(b"\r\n\r\n", max(0, self._scan - 3))
                if end < 0:
                    self._scan = len(buf)
                    if len(buf) > self.max_message:
                        raise MessageTooLarge("header section too large on stream", status=None)
                    break
                self._need = end + 4 + self._content_length(buf, end)
                if self._need > self.max_message:
                    raise MessageTooLarge("message too large on stream", status=None)
            if len(buf) < self._need:
                break
            out.append(bytes(buf[: self._need]))
            del buf[: self._need]
            self._need = self._scan = 0
        return out

    @staticmethod
    def _content_length(buf: bytearray, end: int) -> int:
        values = {m.group(1) for m in _CLEN_RE.finditer(buf, 0, end + 2)}
        if len(values) != 1:
            raise SipError("missing or conflicting Content-Length on a stream", status=None)
        raw = values.pop()
        if not raw.isdigit() or len(raw) > 10:
            raise SipError("malformed Content-Length on a stream", status=None)
        return int(raw)
