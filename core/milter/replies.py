"""Verdicts become milter replies, and modifications become milter actions."""

from __future__ import annotations

from collections.abc import Iterator

import structlog

from mailgate import modifications as m
from mailgate.message import Message
from mailgate.milter import codec as c
from mailgate.milter.options import Negotiated
from mailgate.milter.protocol import BODY_CHUNK, Action
from mailgate.verdict import Verdict, VerdictKind

log = structlog.get_logger("mailgate.milter")


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
        {type(mod).__name__ for mod in modifications if not agreed.actions & _NEEDS[type(mod)]}
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
        if not agreed.actions & _NEEDS[type(mod)]:
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
