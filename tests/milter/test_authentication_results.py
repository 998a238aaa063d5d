"""Authentication-Results through the milter listener: the forged header's deletion and our
header go back to the MTA as milter actions (CHGHEADER with an empty value, INSHEADER at 0)."""

from __future__ import annotations

from mailgate.authentication_results import AuthenticationResultsSettings
from mailgate.milter import codec as c
from mailgate.milter.protocol import ALL_ACTIONS, Step
from mailgate.pipeline import Pipeline
from tests.milter.test_listener_protocol import EVERYTHING, connect, serve


async def test_the_forged_header_is_deleted_and_ours_inserted_first() -> None:
    chain = Pipeline([])
    chain.authentication_results = AuthenticationResultsSettings(authserv_id="mx.mailgate.test")
    listener = await serve(chain)
    try:
        client = await connect(listener)
        await client.send(c.OptNeg(6, int(ALL_ACTIONS), int(EVERYTHING)))
        reply = await client.read()
        assert isinstance(reply, c.OptNegReply)
        assert not Step(reply.protocol) & Step.NOHDRS  # the headers are needed to find forgeries
        await client.send(
            c.Connect(b"client.example.com", b"4", 4000, b"192.0.2.1"),
            c.Mail(b"<a@example.com>"),
            c.Rcpt(b"<b@example.com>"),
            c.Header(b"Authentication-Results", b" other.example; none"),
            c.Header(b"Authentication-Results", b" (x) MX.mailgate.test; spf=pass"),
            c.Header(b"Subject", b" hi"),
            c.Body(b"body\r\n"),
            c.EndOfMessage(),
        )
        assert [await client.read() for _ in range(3)] == [
            c.ChangeHeader(2, b"Authentication-Results", b""),
            c.InsertHeader(0, b"Authentication-Results", b" mx.mailgate.test; none"),
            c.Continue(),
        ]
    finally:
        await listener.stop()
