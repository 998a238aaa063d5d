"""Between mailgate's vocabulary and the milter protocol's, both ways.

The listener turns verdicts into milter replies and modifications into milter actions for the
MTA; the bridge turns an external milter's replies into verdicts and its actions into the
transaction's modifications. One vocabulary (`mailgate.modifications`), two directions, here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import IO

from mailgate import modifications as m
from mailgate.logging import get_logger
from mailgate.message import Message, new_spool
from mailgate.milter import codec as c
from mailgate.milter.options import Negotiated
from mailgate.milter.protocol import BODY_CHUNK, Action, Command
from mailgate.session import Transaction
from mailgate.verdict import Verdict, VerdictKind

log = get_logger("mailgate.milter")
_bridge_log = get_logger("mailgate.plugins.milter")

# -------------------------------------------------------------------------------------------
# verdicts and modifications to replies and actions (the listener)
# -------------------------------------------------------------------------------------------


def wire(text: str) -> bytes:
    """A header, address or reply as bytes, 8-bit data kept as it arrived."""
    return text.encode("utf-8", "surrogateescape")


def verdict_reply(verdict: Verdict | None, *, end_of_message: bool) -> c.MilterReply:
    """The reply that ends a step.

    Accept ends only the stage before the end of message (as in the SMTP listener), so it is
    CONTINUE there. Refusals carry the plugin's own code, enhanced status and text; a 421
    (disconnect) makes Postfix close the client's connection. Quarantine is an action, sent by
    `actions` at the end of message.
    """
    if verdict is None or verdict.kind is VerdictKind.QUARANTINE:
        return c.Continue()
    if verdict.kind is VerdictKind.ACCEPT:
        return c.Accept() if end_of_message else c.Continue()
    if verdict.kind is VerdictKind.DISCARD:
        return c.Discard()
    return c.ReplyCode(wire(verdict.smtp_reply()))


def _angle(address: str) -> bytes:
    return wire(address if address.startswith("<") else f"<{address}>")


def _value(value: str, agreed: Negotiated) -> bytes:
    # Postfix stores milter header values with LF line ends, and adds the space after the
    # colon itself unless the leading space was negotiated.
    text = value.replace("\r\n", "\n")
    if agreed.leading_space and text[:1] not in (" ", "\t"):
        text = " " + text
    return wire(text)


_NEEDS: dict[type, Action] = {
    m.AddHeader: Action.ADDHDRS,
    m.InsertHeader: Action.ADDHDRS,  # libmilter and Postfix check ADDHDRS for INSHEADER
    m.ChangeHeader: Action.CHGHDRS,
    m.DeleteHeader: Action.CHGHDRS,
    m.ReplaceBody: Action.CHGBODY,
    m.AddRecipient: Action.ADDRCPT,
    m.DeleteRecipient: Action.DELRCPT,
    m.ChangeSender: Action.CHGFROM,
    m.Quarantine: Action.QUARANTINE,
}
_NEEDS_BITS: dict[type, int] = {kind: int(action) for kind, action in _NEEDS.items()}
"""`_NEEDS` as plain ints: a test of `int` bits costs a fraction of an `IntFlag` one."""


def _action(mod: m.Modification, agreed: Negotiated) -> c.MilterReply | None:
    match mod:
        case m.AddHeader(name, value):
            return c.AddHeader(wire(name), _value(value, agreed))
        case m.InsertHeader(index, name, value):
            return c.InsertHeader(index, wire(name), _value(value, agreed))
        case m.ChangeHeader(name, occurrence, value):
            return c.ChangeHeader(occurrence, wire(name), _value(value, agreed))
        case m.DeleteHeader(name, occurrence):
            return c.ChangeHeader(occurrence, wire(name), b"")
        case m.AddRecipient(address, params) if params and agreed.actions & Action.ADDRCPT_PAR:
            return c.AddRcptPar(_angle(address), wire(" ".join(params)))
        case m.AddRecipient(address, params):
            if params:
                log.warning("recipient parameters dropped: MTA lacks ADDRCPT_PAR", rcpt=address)
            return c.AddRcpt(_angle(address))
        case m.DeleteRecipient(address):
            return c.DelRcpt(_angle(address))
        case m.ChangeSender(address, params):
            return c.ChangeFrom(_angle(address), wire(" ".join(params)) if params else None)
        case m.Quarantine(reason):
            return c.Quarantine(wire(reason or "quarantined"))
    return None


def ungranted(modifications: list[m.Modification], agreed: Negotiated) -> list[str]:
    """The kinds of modification in `modifications` that the MTA did not offer to accept.

    The message must not go on without them (a recipient a plugin removed would still get it),
    so the listener tempfails such a message instead of dropping the change.
    """
    return sorted(
        {
            type(mod).__name__
            for mod in modifications
            if not agreed.action_bits & _NEEDS_BITS[type(mod)]
        }
    )


def actions(
    modifications: list[m.Modification], message: Message | None, agreed: Negotiated
) -> Iterator[c.MilterReply]:
    """The milter actions for a transaction's modifications, in the order they were made.

    A replaced body is sent once, from the message as the plugins left it, in chunks. Check
    `ungranted` first: an action the MTA did not offer is left out here.
    """
    body_replaced = False
    for mod in modifications:
        if not agreed.action_bits & _NEEDS_BITS[type(mod)]:
            continue
        if isinstance(mod, m.ReplaceBody):
            body_replaced = True
            continue
        action = _action(mod, agreed)
        if action is not None:
            yield action
    if body_replaced and message is not None:
        sent = False
        for chunk in message.iter_body(BODY_CHUNK):
            sent = True
            yield c.ReplaceBody(chunk)
        if not sent:
            yield c.ReplaceBody(b"")


# -------------------------------------------------------------------------------------------
# a milter's replies and actions to verdicts and modifications (the bridge)
# -------------------------------------------------------------------------------------------

ACTION_NEEDS: dict[type, Action] = {
    c.AddHeader: Action.ADDHDRS,
    c.InsertHeader: Action.ADDHDRS,  # as libmilter and Postfix have it, not CHGHDRS
    c.ChangeHeader: Action.CHGHDRS,
    c.ReplaceBody: Action.CHGBODY,
    c.AddRcpt: Action.ADDRCPT,
    c.AddRcptPar: Action.ADDRCPT_PAR,
    c.DelRcpt: Action.DELRCPT,
    c.ChangeFrom: Action.CHGFROM,
    c.Quarantine: Action.QUARANTINE,
}
"""The action a milter must have negotiated to send each end-of-message action frame."""

_REPLY_LINE = re.compile(r"^([2-5]\d\d)[ -](?:([2-5]\.\d{1,3}\.\d{1,3}) )?(.*)$")
_UNAVAILABLE = "Service unavailable - try again later"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _bare_address(raw: bytes) -> str:
    text = _text(raw).strip()
    return text[1:-1] if text.startswith("<") and text.endswith(">") else text


def _header_value(raw: bytes) -> str:
    """A header value from the milter, with CRLF line ends inside folded values."""
    return _text(raw).replace("\r\n", "\n").replace("\n", "\r\n")


def reply_verdict(text: str) -> Verdict | None:
    """A SMFIR_REPLYCODE reply as a verdict: code, enhanced status and text as the milter gave
    them; a multi-line reply stays multi-line, with its first line's code and status on every
    line. None if not 4xx/5xx."""
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    parsed = [_REPLY_LINE.match(line) for line in lines]
    if not parsed or parsed[0] is None:
        return None
    code = int(parsed[0].group(1))
    status = parsed[0].group(2) or ""
    body = "\n".join(
        (m.group(3) if m else line).strip() for m, line in zip(parsed, lines, strict=True)
    )
    if status and status[0] != str(code)[0]:
        status = ""
    if code == 421:
        return Verdict.disconnect(body, reason="milter replied 421")
    if code // 100 == 4:
        return Verdict.tempfail(code, status, body)
    if code // 100 == 5:
        return Verdict.reject(code, status, body)
    return None


def milter_verdict(
    reply: c.Frame, command: Command | None, milter: str, *, end_of_message: bool
) -> Verdict | None:
    """The verdict for the reply that ended a step of the milter named `milter`.

    CONTINUE and ACCEPT go on. DISCARD is a verdict only at the end of message (before it, the
    message goes on until then). SHUTDOWN and CONN_FAIL disconnect. REJECT is Postfix's 554 at
    CONNECT and 550 elsewhere, TEMPFAIL its 451, REPLYCODE the milter's own reply (a 451 if that
    is not a 4xx or 5xx reply).
    """
    if isinstance(reply, c.Continue | c.Accept):
        return None
    if isinstance(reply, c.Discard):
        return Verdict.discard(reason=f"milter {milter}") if end_of_message else None
    if isinstance(reply, c.Shutdown | c.ConnFail):
        return Verdict.disconnect(reason=f"milter {milter}: {type(reply).__name__}")
    why = f"milter {milter} at {command.name if command else '?'}"
    if isinstance(reply, c.ReplyCode):
        verdict = reply_verdict(_text(reply.text))
        if verdict is not None:
            return verdict
        _bridge_log.warning("milter sent a bad reply code", milter=milter, reply=reply.text)
        return Verdict.tempfail(451, "4.7.1", _UNAVAILABLE)
    if isinstance(reply, c.Reject):
        code = 554 if command is Command.CONNECT else 550
        return Verdict.reject(code, "5.7.1", "Command rejected", reason=why)
    return Verdict.tempfail(451, "4.7.1", _UNAVAILABLE, reason=why)


def apply_actions(actions: Iterable[c.MilterReply], tx: Transaction, milter: str) -> None:
    """A milter's end-of-message actions as the transaction's modifications, in the order they
    came. The chunks of SMFIR_REPLBODY make one new body."""
    body: IO[bytes] | None = None
    for action in actions:
        match action:
            case c.AddHeader(name, value):
                tx.add_header(_text(name), _header_value(value))
            case c.InsertHeader(index, name, value):
                tx.insert_header(index, _text(name), _header_value(value))
            case c.ChangeHeader(index, name, b""):
                tx.delete_header(_text(name), max(index, 1))
            case c.ChangeHeader(index, name, value):
                tx.change_header(_text(name), _header_value(value), max(index, 1))
            case c.ReplaceBody(chunk):
                body = body or new_spool()
                body.write(chunk)
            case c.AddRcpt(rcpt):
                tx.add_recipient(_bare_address(rcpt))
            case c.AddRcptPar(rcpt, params):
                tx.add_recipient(_bare_address(rcpt), tuple(_text(params).split()))
            case c.DelRcpt(rcpt):
                tx.delete_recipient(_bare_address(rcpt))
            case c.ChangeFrom(sender, params):
                tx.change_sender(_bare_address(sender), tuple(_text(params or b"").split()))
            case c.Quarantine(reason):
                tx.quarantine(_text(reason) or f"milter {milter}")
    if body is not None:
        body.seek(0)
        tx.replace_body(body)
