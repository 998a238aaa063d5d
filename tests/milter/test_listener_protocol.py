"""The milter listener frame by frame: negotiation, no-reply steps, malformed frames, sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from mailgate import Address, Message, Transaction, Verdict, hookimpl
from mailgate.message import Header
from mailgate.milter import MilterListener, MilterListenerSettings
from mailgate.milter import codec as c
from mailgate.milter.protocol import ALL_ACTIONS, V2_ACTIONS, V2_STEPS, Action, Step
from mailgate.pipeline import EnabledPlugin, Pipeline, declared_reads
from mailgate.plugins.add_header import AddHeader
from mailgate.plugins.relay_control import RelayControl, RelayControlSettings
from mailgate.sockaddr import SocketAddress
from tests.logs import captured_logs, events

__all__ = ["captured_logs"]

EVERYTHING = Step(0x1FFFFF)


class Tagger:
    """Adds a header at the end of data."""

    @hookimpl
    def on_message(self, transaction: Transaction, message: Message) -> None:
        """Add ``X-Tag: 1``."""
        transaction.add_header("X-Tag", "1")


class Client:
    """An asyncio MTA side speaking the codec to the listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = c.FrameDecoder("replies")
        self.frames: list[c.Frame] = []

    async def send(self, *frames: c.Frame) -> None:
        """Send frames in one write."""
        self.writer.write(b"".join(c.encode(f) for f in frames))
        await self.writer.drain()

    async def read(self) -> c.Frame:
        """The next reply."""
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            if not data:
                raise ConnectionError("closed")
            self.frames += self.decoder.feed(data)
        return self.frames.pop(0)


async def serve(
    chain: Pipeline, tmp_path: Path | None = None, *, progress_interval: float = 10.0
) -> MilterListener:
    """A started listener on TCP (or a unix socket under `tmp_path`)."""
    address = f"unix:{tmp_path}/m.sock" if tmp_path else "inet:127.0.0.1:0"
    settings = MilterListenerSettings(address=address, progress_interval=progress_interval)
    listener = MilterListener(settings, pipeline=lambda: chain)
    await listener.start()
    return listener


@pytest.fixture
async def tagging() -> AsyncIterator[MilterListener]:
    """A listener whose chain adds a header."""
    listener = await serve(Pipeline([EnabledPlugin("tag", Tagger())]))
    yield listener
    await listener.stop()


async def connect(listener: MilterListener) -> Client:
    """A client connected over TCP."""
    return Client(*await asyncio.open_connection("127.0.0.1", listener.port))


async def test_v6_negotiation_asks_only_for_what_the_chain_needs(
    tagging: MilterListener,
) -> None:
    client = await connect(tagging)
    await client.send(c.OptNeg(6, int(ALL_ACTIONS), int(EVERYTHING)))
    reply = await client.read()
    assert isinstance(reply, c.OptNegReply)
    assert reply.version == 6
    steps = Step(reply.protocol)
    # No decision before the end of data: no replies at connect, HELO, MAIL, RCPT, no DATA.
    for flag in (Step.NR_CONN, Step.NR_HELO, Step.NR_MAIL, Step.NR_RCPT, Step.NODATA):
        assert steps & flag, flag
    assert steps & Step.NR_HDR and steps & Step.NR_BODY and steps & Step.NOEOH
    assert not steps & (Step.NOBODY | Step.NOHDRS)  # on_message needs the content
    assert dict(reply.macro_lists)[0].split().count(b"{client_addr}") == 1


async def test_envelope_only_chain_gets_no_content() -> None:
    class Envelope:
        @hookimpl
        def on_rcpt(self) -> None:
            """Look at recipients only."""

    listener = await serve(Pipeline([EnabledPlugin("env", Envelope())]))
    try:
        client = await connect(listener)
        await client.send(c.OptNeg(6, int(ALL_ACTIONS), int(EVERYTHING)))
        reply = await client.read()
        assert isinstance(reply, c.OptNegReply)
        steps = Step(reply.protocol)
        assert steps & Step.NOBODY and steps & Step.NOHDRS
        assert not steps & Step.NR_RCPT
    finally:
        await listener.stop()


@pytest.mark.parametrize(("check_milter", "waits_at_rcpt"), [(False, False), (True, True)])
async def test_relay_control_makes_the_mta_wait_at_rcpt_only_when_it_checks_milter_mail(
    check_milter: bool, waits_at_rcpt: bool
) -> None:
    relay = RelayControl(RelayControlSettings(check_milter=check_milter))
    listener = await serve(Pipeline([EnabledPlugin("relay_control", relay)]))
    try:
        client = await connect(listener)
        await client.send(c.OptNeg(6, int(ALL_ACTIONS), int(EVERYTHING)))
        reply = await client.read()
        assert isinstance(reply, c.OptNegReply)
        assert bool(Step(reply.protocol) & Step.NR_RCPT) is not waits_at_rcpt
    finally:
        await listener.stop()


async def test_v2_client_gets_only_what_it_offered(tagging: MilterListener) -> None:
    client = await connect(tagging)
    await client.send(c.OptNeg(2, int(V2_ACTIONS), int(V2_STEPS)))
    reply = await client.read()
    assert isinstance(reply, c.OptNegReply)
    assert reply.version == 2
    assert not Action(reply.actions) & ~V2_ACTIONS
    assert not Step(reply.protocol) & ~V2_STEPS
    assert reply.macro_lists == ()  # no SETSYMLIST offered


async def test_v2_transaction_gets_a_reply_at_every_step(tagging: MilterListener) -> None:
    client = await connect(tagging)
    await client.send(c.OptNeg(2, int(V2_ACTIONS), 0))
    await client.read()
    steps: list[c.Frame] = [
        c.Connect(b"client.test", b"4", 4000, b"192.0.2.1"),
        c.Helo(b"client.test"),
        c.Mail(b"<a@example.com>"),
        c.Rcpt(b"<b@example.com>"),
        c.Header(b"Subject", b"hi"),
        c.EndOfHeaders(),
        c.Body(b"body\r\n"),
    ]
    for frame in steps:
        await client.send(frame)
        assert await client.read() == c.Continue(), frame
    await client.send(c.EndOfMessage())
    assert await client.read() == c.AddHeader(b"X-Tag", b"1")
    assert await client.read() == c.Continue()


async def test_pipelined_steps_are_answered_in_one_write(tagging: MilterListener) -> None:
    client = await connect(tagging)
    await client.send(c.OptNeg(6, int(ALL_ACTIONS), int(EVERYTHING)))
    await client.read()
    await client.send(
        c.Macro(b"C", ((b"{client_addr}", b"192.0.2.1"),)),
        c.Connect(b"[192.0.2.1]", b"4", 4000, b"192.0.2.1"),
        c.Mail(b"<a@example.com>"),
        c.Rcpt(b"<b@example.com>"),
        c.Header(b"Subject", b" hi"),
        c.Body(b"body\r\n"),
        c.EndOfMessage(),
    )
    # Connect, MAIL, RCPT, header and body were agreed to need no reply: only EOM answers.
    data = await asyncio.wait_for(client.reader.read(65536), 5)
    assert client.decoder.feed(data) == [c.AddHeader(b"X-Tag", b" 1"), c.Continue()]


async def test_malformed_frame_closes_the_connection_with_a_log_line(
    tagging: MilterListener,
) -> None:
    client = await connect(tagging)
    with structlog.testing.capture_logs() as logs:
        await client.send(c.OptNeg(6, int(ALL_ACTIONS), int(EVERYTHING)))
        await client.read()
        client.writer.write(b"\0\0\0\x03Hx!")  # HELO without its NUL terminator
        await client.writer.drain()
        assert await asyncio.wait_for(client.reader.read(), 5) == b""
    assert any(
        e["event"] == "milter protocol error, closing connection" and "NUL" in e["reason"]
        for e in logs
    ), logs


async def test_oversized_frame_closes_the_connection(tagging: MilterListener) -> None:
    client = await connect(tagging)
    client.writer.write((50 << 20).to_bytes(4, "big") + b"B")
    await client.writer.drain()
    assert await asyncio.wait_for(client.reader.read(), 5) == b""


async def test_unix_socket_listener(tmp_path: Path) -> None:
    listener = await serve(Pipeline([]), tmp_path)
    try:
        assert listener.address == f"unix:{tmp_path}/m.sock"
        reader, writer = await asyncio.open_unix_connection(f"{tmp_path}/m.sock")
        client = Client(reader, writer)
        await client.send(c.OptNeg(6, int(ALL_ACTIONS), int(EVERYTHING)))
        assert isinstance(await client.read(), c.OptNegReply)
    finally:
        await listener.stop()
    assert not (tmp_path / "m.sock").exists()


@pytest.mark.parametrize(
    ("spec", "host", "port", "path"),
    [
        ("inet:127.0.0.1:8899", "127.0.0.1", 8899, ""),
        ("inet:8899@127.0.0.1", "127.0.0.1", 8899, ""),
        ("127.0.0.1:8899", "127.0.0.1", 8899, ""),
        ("inet6:[::1]:8899", "::1", 8899, ""),
        ("unix:/run/mailgate/milter.sock", "", 0, "/run/mailgate/milter.sock"),
        ("local:/run/m.sock", "", 0, "/run/m.sock"),
    ],
)
def test_addresses_in_postfix_and_sendmail_syntax(
    spec: str, host: str, port: int, path: str
) -> None:
    addr = SocketAddress.parse(spec)
    assert (addr.host, addr.port, addr.path) == (host, port, path)


@pytest.mark.parametrize("spec", ["inet:nohost", "unix:relative.sock", "inet:h:99999", ""])
def test_bad_addresses_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=r"socket address must be|absolute"):
        SocketAddress.parse(spec)


# -- what the chain reads (``reads``): NOHDRS / NOBODY ----------------------------------------


class HeaderReader:
    """Reads the Subject at the end of data, never the body."""

    reads = frozenset({"headers"})

    @hookimpl
    def on_message(self, message: Message) -> None:
        """Look at the Subject."""
        message.get("Subject")


class Scanner:
    """Reads everything (no ``reads``: the default)."""

    @hookimpl
    def on_message(self, message: Message) -> None:
        """Read the body."""
        b"".join(message.iter_body())


async def negotiated_steps(*plugins: object) -> Step:
    """The protocol steps the listener answers a v6 OPTNEG offering everything with."""
    chain = Pipeline(
        [EnabledPlugin(f"p{i}", p, reads=declared_reads(p)) for i, p in enumerate(plugins)]
    )
    listener = await serve(chain)
    try:
        client = await connect(listener)
        await client.send(c.OptNeg(6, int(ALL_ACTIONS), int(EVERYTHING)))
        reply = await client.read()
        assert isinstance(reply, c.OptNegReply)
        return Step(reply.protocol)
    finally:
        await listener.stop()


async def test_add_header_alone_is_sent_no_headers_and_no_body() -> None:
    steps = await negotiated_steps(AddHeader())
    assert steps & Step.NOHDRS and steps & Step.NOBODY and steps & Step.NOEOH


async def test_a_body_reader_gets_the_content_whoever_else_is_enabled() -> None:
    for chain in ([Scanner()], [AddHeader(), Scanner()], [Scanner(), AddHeader()]):
        steps = await negotiated_steps(*chain)
        assert not steps & (Step.NOHDRS | Step.NOBODY), chain


async def test_a_header_reader_gets_headers_but_no_body() -> None:
    steps = await negotiated_steps(AddHeader(), HeaderReader())
    assert steps & Step.NOBODY and not steps & Step.NOHDRS


async def test_on_headers_alone_gets_headers_but_no_body() -> None:
    class Headers:
        @hookimpl
        def on_headers(self, headers: list[Header]) -> None:
            """Look at the headers (reads: the default, both)."""

    steps = await negotiated_steps(Headers())
    assert steps & Step.NOBODY and not steps & (Step.NOHDRS | Step.NOEOH)


async def test_without_content_the_plugin_sees_an_empty_message_and_still_adds() -> None:
    seen: list[tuple[list[Header], int, frozenset[str]]] = []

    class Adder:
        reads: frozenset[str] = frozenset()

        @hookimpl
        def on_message(self, transaction: Transaction, message: Message) -> None:
            """Record what arrived, add a header."""
            seen.append((list(message.headers), message.body_size, message.withheld))
            transaction.add_header("X-Tag", "1")

    listener = await serve(Pipeline([EnabledPlugin("add", Adder(), reads=frozenset())]))
    try:
        client = await connect(listener)
        await client.send(c.OptNeg(6, int(ALL_ACTIONS), int(EVERYTHING)))
        reply = await client.read()
        assert isinstance(reply, c.OptNegReply)
        # An MTA that honours NOHDRS/NOBODY/NOEOH goes from RCPT straight to end of message.
        await client.send(
            c.Connect(b"[192.0.2.1]", b"4", 4000, b"192.0.2.1"),
            c.Mail(b"<a@example.com>", (b"SIZE=2048",)),
            c.Rcpt(b"<b@example.com>"),
            c.EndOfMessage(),
        )
        assert await client.read() == c.AddHeader(b"X-Tag", b" 1")
        assert await client.read() == c.Continue()
    finally:
        await listener.stop()
    assert seen == [([], 0, frozenset({"headers", "body"}))]


async def test_an_mta_that_sends_the_content_anyway_is_served() -> None:
    # Protocol 2 clients may not offer NOHDRS/NOBODY: the content then arrives as before.
    seen: list[frozenset[str]] = []

    class Adder:
        reads: frozenset[str] = frozenset()

        @hookimpl
        def on_message(self, transaction: Transaction, message: Message) -> None:
            """Record what was withheld."""
            seen.append(message.withheld)
            assert message.get("Subject") == "hi"

    listener = await serve(Pipeline([EnabledPlugin("add", Adder(), reads=frozenset())]))
    try:
        client = await connect(listener)
        await client.send(c.OptNeg(6, int(ALL_ACTIONS), int(Step.NR_HDR | Step.NR_BODY)))
        reply = await client.read()
        assert isinstance(reply, c.OptNegReply)
        assert not Step(reply.protocol) & (Step.NOHDRS | Step.NOBODY)
        await client.send(
            c.Connect(b"[192.0.2.1]", b"4", 4000, b"192.0.2.1"),
            c.Mail(b"<a@example.com>"),
            c.Rcpt(b"<b@example.com>"),
            c.Header(b"Subject", b"hi"),
            c.EndOfHeaders(),
            c.Body(b"body\r\n"),
            c.EndOfMessage(),
        )
        while not isinstance(await client.read(), c.Continue):
            pass
    finally:
        await listener.stop()
    assert seen == [frozenset()]


async def test_a_change_the_mta_did_not_grant_tempfails_the_message(
    tagging: MilterListener,
) -> None:
    client = await connect(tagging)
    # The plugin adds a header; this MTA grants every action but adding headers.
    await client.send(c.OptNeg(6, int(ALL_ACTIONS & ~Action.ADDHDRS), int(EVERYTHING)))
    await client.read()
    await client.send(
        c.Connect(b"[192.0.2.1]", b"4", 4000, b"192.0.2.1"),
        c.Mail(b"<a@example.com>"),
        c.Rcpt(b"<b@example.com>"),
        c.Header(b"Subject", b" hi"),
        c.Body(b"body\r\n"),
        c.EndOfMessage(),
    )
    data = await asyncio.wait_for(client.reader.read(65536), 5)
    [reply] = client.decoder.feed(data)
    assert isinstance(reply, c.ReplyCode)
    assert reply.text.startswith(b"451 4.3.0")


# -- PROGRESS while the end-of-message plugins run ---------------------------------------------


class Slow:
    """Takes `seconds` at the end of data, then adds a header."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.cancelled = False

    @hookimpl
    async def on_message(self, transaction: Transaction) -> None:
        """Sleep, then add ``X-Slow: 1``."""
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        transaction.add_header("X-Slow", "1")


async def slow_message(version: int, progress_interval: float) -> list[c.Frame]:
    """Everything a client of `version` reads after the end of a message a plugin scans 1.2 s."""
    listener = await serve(
        Pipeline([EnabledPlugin("slow", Slow(1.2))]), progress_interval=progress_interval
    )
    try:
        client = await connect(listener)
        steps = int(EVERYTHING) if version == 6 else int(V2_STEPS)
        actions = ALL_ACTIONS if version == 6 else V2_ACTIONS
        await client.send(c.OptNeg(version, int(actions), steps))
        await client.read()
        steps_sent: list[c.Frame] = [
            c.Connect(b"[192.0.2.1]", b"4", 4000, b"192.0.2.1"),
            c.Mail(b"<a@example.com>"),
            c.Rcpt(b"<b@example.com>"),
            c.Header(b"Subject", b" hi"),
            c.Body(b"body\r\n"),
        ]
        await client.send(*steps_sent)
        if version == 2:  # a v2 MTA waits for a reply to every step
            for _ in steps_sent:
                assert await client.read() == c.Continue()
        await client.send(c.EndOfMessage())
        frames: list[c.Frame] = []
        while not frames or not isinstance(frames[-1], c.Continue):
            frames.append(await client.read())
        return frames
    finally:
        await listener.stop()


async def test_progress_is_sent_while_the_plugins_work() -> None:
    frames = await slow_message(6, 0.3)
    *progress, action, final = frames
    assert len(progress) >= 2, frames
    assert all(f == c.Progress() for f in progress), frames
    assert (action, final) == (c.AddHeader(b"X-Slow", b" 1"), c.Continue())


async def test_no_progress_for_a_v2_mta_or_when_disabled() -> None:
    assert await slow_message(2, 0.3) == [c.AddHeader(b"X-Slow", b"1"), c.Continue()]
    assert await slow_message(6, 0) == [c.AddHeader(b"X-Slow", b" 1"), c.Continue()]


async def test_closing_the_listener_cancels_the_plugins_work() -> None:
    plugin = Slow(30)
    listener = await serve(Pipeline([EnabledPlugin("slow", plugin)]), progress_interval=0.1)
    try:
        client = await connect(listener)
        await client.send(c.OptNeg(6, int(ALL_ACTIONS), int(EVERYTHING)))
        await client.read()
        await client.send(
            c.Connect(b"[192.0.2.1]", b"4", 4000, b"192.0.2.1"),
            c.Mail(b"<a@example.com>"),
            c.Rcpt(b"<b@example.com>"),
            c.EndOfMessage(),
        )
        assert await client.read() == c.Progress()
    finally:
        await listener.stop()
    assert plugin.cancelled
    # read() returns at end of file: the listener closed the connection. Before that it may
    # have sent more progress frames (one every 0.1 s), but no reply: the work was cancelled.
    leftover = await asyncio.wait_for(client.reader.read(), 5)
    progress = b"\0\0\0\x01p"
    assert leftover == progress * (len(leftover) // len(progress))


async def test_the_operators_log_has_every_session_and_message(
    captured_logs: list[dict[str, object]],
) -> None:
    class Refuser(Tagger):
        @hookimpl
        def on_rcpt(self, recipient: Address) -> Verdict | None:
            """Refuse spam@."""
            if recipient.local_part == "spam":
                return Verdict.reject(550, "5.7.1", "Go away", reason="listed")
            return None

    listener = await serve(Pipeline([EnabledPlugin("refuser", Refuser())]))
    try:
        client = await connect(listener)
        await client.send(c.OptNeg(6, int(ALL_ACTIONS), int(EVERYTHING)))
        await client.read()
        content: list[c.Frame] = [
            c.Header(b"Subject", b"hi"),
            c.EndOfHeaders(),
            c.Body(b"body\r\n"),
            c.EndOfMessage(),
        ]
        # As Postfix does: with its only recipient refused, the message is aborted.
        for rcpt, rest in ((b"<spam@example.com>", [c.Abort()]), (b"<b@example.com>", content)):
            await client.send(
                c.Connect(b"client.test", b"4", 4000, b"192.0.2.1"),
                c.Helo(b"client.test"),
                c.Mail(b"<a@example.com>"),
                c.Rcpt(rcpt),
                *rest,
                c.QuitNoClose(),
            )
        await client.send(c.Quit())
        while await asyncio.wait_for(client.reader.read(65536), 5):
            pass
    finally:
        await listener.stop()
    starts = events(captured_logs, "session start")
    outcomes = events(captured_logs, "message outcome")
    assert (
        len(starts) == 2 and len(outcomes) == 2 and len(events(captured_logs, "session end")) == 2
    )
    listener_lines = {"milter listener started", "milter listener stopped"}
    sessionless = [x for x in captured_logs if not x.get("session")]
    assert {x["event"] for x in sessionless} <= listener_lines, sessionless
    assert [o["verdict"] for o in outcomes] == ["reject", "accept"]
    assert all(
        o["tx"] and o["session"] == s["session"] for o, s in zip(outcomes, starts, strict=True)
    )
    (refused,) = events(captured_logs, "recipient refused")
    assert (refused["rcpt"], refused["code"], refused["by"]) == ("spam@example.com", 550, "refuser")


class DataGate:
    """Refuses at DATA when the sender is ``spam@example.com``; records the hooks it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def on_data(self, transaction: Transaction) -> Verdict | None:
        """Refuse the one sender."""
        self.seen.append("data")
        if transaction.sender is not None and transaction.sender.address == "spam@example.com":
            return Verdict.reject(text="no DATA from you")
        return None

    @hookimpl
    def on_headers(self, headers: list[Header]) -> None:
        """Only recorded: it must come after `on_data`."""
        self.seen.append("headers")


async def _v2_transaction(client: Client, sender: bytes) -> c.Frame:
    """MAIL to the end of headers on a v2 link, every step answered; the EOH reply."""
    for frame in (
        c.Mail(b"<" + sender + b">"),
        c.Rcpt(b"<b@example.com>"),
        c.Header(b"Subject", b"hi"),
    ):
        await client.send(frame)
        assert await client.read() == c.Continue(), frame
    await client.send(c.EndOfHeaders())
    return await client.read()


async def test_a_v2_mta_sends_no_data_step_yet_on_data_runs_before_the_headers() -> None:
    gate = DataGate()
    listener = await serve(Pipeline([EnabledPlugin("gate", gate)]))
    try:
        client = await connect(listener)
        await client.send(c.OptNeg(2, int(V2_ACTIONS), 0))
        await client.read()
        await client.send(c.Connect(b"client.test", b"4", 4000, b"192.0.2.1"))
        assert await client.read() == c.Continue()
        refused = await _v2_transaction(client, b"spam@example.com")
        assert refused == c.ReplyCode(b"550 5.7.1 no DATA from you"), refused
        assert gate.seen == ["data"]  # refused at DATA: the headers are never offered
        await client.send(c.Abort())
        assert await _v2_transaction(client, b"a@example.com") == c.Continue()
        await client.send(c.Body(b"body\r\n"))
        assert await client.read() == c.Continue()
        await client.send(c.EndOfMessage())
        assert await client.read() == c.Continue()
        assert gate.seen == ["data", "data", "headers"]
    finally:
        await listener.stop()


async def test_on_data_refuses_at_the_end_of_message_when_the_mta_sends_no_eoh_either() -> None:
    class DataOnly:
        @hookimpl
        def on_data(self) -> Verdict:
            """Refuse every message."""
            return Verdict.reject(text="no DATA at all")

    listener = await serve(Pipeline([EnabledPlugin("gate", DataOnly())]))
    try:
        client = await connect(listener)
        await client.send(c.OptNeg(2, int(V2_ACTIONS), int(V2_STEPS)))
        reply = await client.read()
        assert isinstance(reply, c.OptNegReply) and Step(reply.protocol) & Step.NOEOH
        for frame in (c.Mail(b"<a@example.com>"), c.Rcpt(b"<b@example.com>")):
            await client.send(frame)
            assert await client.read() == c.Continue(), frame
        await client.send(c.EndOfMessage())
        assert await client.read() == c.ReplyCode(b"550 5.7.1 no DATA at all")
    finally:
        await listener.stop()
