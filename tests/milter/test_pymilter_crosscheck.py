"""The codec against pymilter (libmilter), the reference filter: a whole transaction in v6."""

from __future__ import annotations

import socket

import pytest

from mailgate.milter import codec as c
from mailgate.milter.protocol import ALL_ACTIONS, NO_REPLY, Action, Command, Step
from tests.milter.conftest import MtaClient

ALL_STEPS = Step(0x1FFFFF)


def _step(client: MtaClient, proto: Step, cmd: Command, *frames: c.Frame) -> c.Frame | None:
    """Send a step's frames; read its reply unless the milter asked for none."""
    client.send(*frames)
    if proto & NO_REPLY[cmd]:
        return None
    return client.until_final()[1]


def _continued(proto: Step, cmd: Command) -> c.Frame | None:
    """What `_step` returns when the milter goes on: nothing if it asked to send no reply."""
    return None if proto & NO_REPLY[cmd] else c.Continue()


@pytest.mark.peer  # pymilter_peer starts a libmilter daemon
def test_full_transaction_against_pymilter(pymilter_peer: tuple[str, int]) -> None:
    with socket.create_connection(pymilter_peer, timeout=5) as sock:
        client = MtaClient(sock)
        client.send(c.OptNeg(6, int(ALL_ACTIONS), int(ALL_STEPS)))
        neg = client.read()
        assert isinstance(neg, c.OptNegReply)
        assert neg.version == 6
        wanted = Action.ADDHDRS | Action.CHGHDRS | Action.CHGBODY | Action.ADDRCPT_PAR
        assert Action(neg.actions) & wanted == wanted
        proto = Step(neg.protocol)
        assert not proto & ~ALL_STEPS

        reply = _step(
            client,
            proto,
            Command.CONNECT,
            c.Macro(b"C", ((b"j", b"mx.test"), (b"{client_addr}", b"192.0.2.7"))),
            c.Connect(b"client.test", b"4", 40000, b"192.0.2.7"),
        )
        assert reply == _continued(proto, Command.CONNECT)
        helo = _step(client, proto, Command.HELO, c.Helo(b"client.test"))
        assert helo == _continued(proto, Command.HELO)
        mail = c.Mail(b"<alice@example.com>", (b"SIZE=100",))
        mail_reply = _step(client, proto, Command.MAIL, c.Macro(b"M", ((b"i", b"QID1"),)), mail)
        assert mail_reply == _continued(proto, Command.MAIL)
        for rcpt in (b"<bob@example.com>", b"<carol@example.com>"):
            rcpt_reply = _step(client, proto, Command.RCPT, c.Rcpt(rcpt))
            assert rcpt_reply == _continued(proto, Command.RCPT)
        if not proto & Step.NODATA:
            _step(client, proto, Command.DATA, c.Data())
        for name, value in ((b"Subject", b"hello"), (b"X-Drop", b"x"), (b"From", b"a@b")):
            _step(client, proto, Command.HEADER, c.Header(name, value))
        _step(client, proto, Command.EOH, c.EndOfHeaders())
        _step(client, proto, Command.BODY, c.Body(b"line one\r\n\xffeight bit\r\n"))
        client.send(c.EndOfMessage())
        actions, final = client.until_final()

        assert final == c.Accept()
        assert actions == [
            c.AddHeader(b"X-Seen", b"QID1 192.0.2.7"),
            c.AddHeader(b"X-Subject", b"hello"),
            c.AddHeader(b"X-Body-Len", b"22"),
            c.InsertHeader(0, b"X-Top", b"first"),
            c.ChangeHeader(1, b"Subject", b"changed"),
            c.ChangeHeader(1, b"X-Drop", b""),
            c.AddRcpt(b"<new@example.com>"),
            c.AddRcptPar(b"<par@example.com>", b"NOTIFY=NEVER"),
            c.DelRcpt(b"<bob@example.com>"),
            c.ChangeFrom(b"<sender2@example.com>", b"SIZE=10"),
            c.ReplaceBody(b"new body\r\n"),
            c.Quarantine(b"held by peer"),
        ]

        # A second transaction on the same connection: the reply code comes back verbatim.
        client.send(c.Abort())
        _step(client, proto, Command.MAIL, c.Mail(b"<refuse@example.com>"))
        _step(client, proto, Command.RCPT, c.Rcpt(b"<bob@example.com>"))
        _step(client, proto, Command.EOH, c.EndOfHeaders())
        client.send(c.EndOfMessage())
        _, final = client.until_final()
        assert final == c.ReplyCode(b"550 5.7.1 refused by peer")
        client.send(c.Quit())
