"""The calls in progress, found by what a message names: a leg's dialog or its INVITE.

Each leg of a call is in :attr:`CallTable.by_dialog` under its dialog's local id (Call-ID
and our tag, §12): that is how an in-dialog request, an ACK, or a response to one of our
requests finds its call. :attr:`CallTable.by_invite` holds the call under the key of the
caller's INVITE (§8.2.2.2: a merged request, the same INVITE by another path, is refused
with ``482``). A request is believed to be of a dialog only from that leg's peer and with
that dialog's remote tag (:meth:`CallTable.in_dialog`, SPEC §8).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sipguard.b2bua.admission import MergeKey, merge_key
from sipguard.b2bua.leg import Leg
from sipguard.b2bua.peers import Peers
from sipguard.sip.errors import SipError
from sipguard.sip.message import Request, Response
from sipguard.sip.transaction import Flow

if TYPE_CHECKING:
    from sipguard.b2bua.call import Call

log = logging.getLogger("sipguard.b2bua")


class CallTable:
    """The calls by dialog and by INVITE (see the module's docstring)."""

    __slots__ = ("by_dialog", "by_invite", "peers", "refused")

    def __init__(self, peers: Peers, refused: Callable[[], object]) -> None:
        self.peers = peers
        self.refused = refused  # counts a request from another than the leg's peer
        self.by_dialog: dict[tuple[str, str], Call] = {}
        self.by_invite: dict[MergeKey, Call] = {}

    def add_caller(self, call: Call) -> None:
        """The call is made: its A-leg and the caller's INVITE lead to it."""
        self.by_dialog[call.a.key()] = call
        self.by_invite[call.merge_key] = call

    def add_callee(self, call: Call) -> None:
        """Its B-leg is made: the callee's messages lead to it too."""
        if call.b is not None:
            self.by_dialog[call.b.key()] = call

    def remove(self, call: Call) -> None:
        by_dialog = self.by_dialog
        for leg in (call.a, call.b):
            if leg is not None and by_dialog.get(leg.key()) is call:
                del by_dialog[leg.key()]
        if self.by_invite.get(call.merge_key) is call:
            del self.by_invite[call.merge_key]

    def merged(self, req: Request, flow: Flow) -> bool:
        """Is ``req`` an INVITE that made a call already (another path's copy)?"""
        return merge_key(req, flow) in self.by_invite

    def leg(self, key: tuple[str, str]) -> tuple[Call, Leg] | None:
        call = self.by_dialog.get(key)
        if call is None:
            return None
        leg = call.a if call.a.key() == key else call.b
        return None if leg is None else (call, leg)

    def callee_leg(self, resp: Response) -> Call | None:
        """The call whose B-leg a response to one of our requests names."""
        key = (resp.call_id, resp.from_.tag or "")
        call = self.by_dialog.get(key)
        return call if call is not None and call.b is not None and call.b.key() == key else None

    def in_dialog(self, req: Request, flow: Flow) -> tuple[Call, Leg] | None:
        """The call and leg ``req`` names, if it comes from that leg's peer and is of its
        dialog: the remote tag is part of the dialog's id (§12.2.2), and another fork's,
        or a forger's, is no request of this dialog. Anyone else's is counted."""
        found = self.leg((req.call_id, req.to.tag or ""))
        if found is None:
            return None
        call, leg = found
        if req.from_.tag == leg.remote_tag and self.peers.from_peer(
            call.trunk_of(leg), leg.flow, flow
        ):
            return found
        log.debug("in-dialog request from %s, not of the leg's peer: refused", flow.host)
        self.refused()
        return None

    def of_message(self, msg: Request | Response, flow: Flow) -> set[Call]:
        """The calls a message from ``flow`` belongs to, as far as it can tell (its legs'
        peers only): those to end when handling it hit our own bug."""
        calls: set[Call] = set()
        for name in ("from", "to"):
            try:  # a response's From is read first here: it may be malformed
                tag = msg.from_.tag if name == "from" else msg.to.tag
            except SipError:
                continue
            found = self.leg((msg.call_id, tag or ""))
            if found is not None and self.peers.from_peer(
                found[0].trunk_of(found[1]), found[1].flow, flow
            ):
                calls.add(found[0])
        if isinstance(msg, Request):
            call = self.by_invite.get(merge_key(msg, flow))
            if call is not None:
                calls.add(call)
        return calls

    def calls(self) -> set[Call]:
        return set(self.by_dialog.values())

    def streams_in_use(self) -> set[tuple[str, str, int]]:
        """(transport, host, port) of every TCP/TLS peer a call in progress uses."""
        out: set[tuple[str, str, int]] = set()
        for call in self.by_dialog.values():
            for leg in (call.a, call.b):
                if leg is not None and leg.flow.reliable:
                    out.add((leg.flow.transport, leg.flow.host, leg.flow.port))
        return out
