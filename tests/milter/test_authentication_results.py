"""Authentication-Results through the milter listener: the forged header's deletion and our
header go back to the MTA as milter actions (CHGHEADER with an empty value, INSHEADER at 0),
and a real Postfix delivers the message with ours and without the forged one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailgate.authentication_results import AuthenticationResultsSettings
from mailgate.milter import codec as c
from mailgate.milter.protocol import ALL_ACTIONS, Step
from mailgate.pipeline import Pipeline
from tests.milter.gate import Gate, open_gate
from tests.milter.test_listener_protocol import EVERYTHING, connect, serve
from tests.peers.workdir import PeerDirs


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


@pytest.fixture(scope="module")
def gate(peer_dirs: PeerDirs) -> Iterator[Gate]:
    """mailgate's milter listener on TCP behind a real Postfix (milter protocol 6 and 2)."""
    with open_gate(peer_dirs.new("postfix"), [("tcp", "inet:127.0.0.1:0")]) as gate:
        yield gate


def test_postfix_delivers_ours_and_not_the_forged_one(gate: Gate) -> None:
    gate.chain.use()
    gate.chain.pipeline.authentication_results = AuthenticationResultsSettings(
        authserv_id="mx.mailgate.test"
    )
    forged = [
        "Authentication-Results: upstream.example.org; spf=fail",
        "Authentication-Results: (trust me) MX.MAILGATE.TEST; dkim=pass header.d=example.com",
    ]
    for route in gate.routes:
        sent = gate.send(route, headers=forged)
        assert sent.returncode == 0, sent.output
        (copy,) = gate.delivered(sent)
        head = copy.data.split(b"\n\n", 1)[0].decode()
        results = [line for line in head.split("\n") if line.lower().startswith("authentic")]
        assert results == [
            "Authentication-Results: mx.mailgate.test; none",
            "Authentication-Results: upstream.example.org; spf=fail",
        ], route.name
        # Postfix puts an insertion at index 0 above its own Received: (only the delivery
        # headers of local(8) come before it).
        assert head.index("mx.mailgate.test; none") < head.index("\nReceived: "), head
