"""Bounded memory on the milter and policy listeners: hostile but well-formed floods of headers,
macros and policy attributes do not grow the process (issue 9, item 2). RSS is read before,
during and after each flood."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog.testing

from mailgate import hookimpl
from mailgate.milter import MilterListener, MilterListenerSettings
from mailgate.milter import codec as c
from mailgate.milter.protocol import ALL_ACTIONS, Step
from mailgate.pipeline import EnabledPlugin, Pipeline
from mailgate.policy import PolicyListener, PolicyListenerSettings
from mailgate.policy.protocol import encode_request

MIB = 1024 * 1024
GROWTH = 40 * MIB
"""What a flood may add to the process at most (the floods below are 200-300 MiB)."""


def rss() -> int:
    """This process's resident set size, in bytes."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class EnvelopeOnly:
    """Reads recipients only: the listener asks the MTA for no headers and no body."""

    @hookimpl
    def on_rcpt(self) -> None:
        """Nothing to decide."""


@pytest.fixture
async def milter() -> AsyncIterator[MilterListener]:
    chain = Pipeline([EnabledPlugin("envelope", EnvelopeOnly())])
    listener = MilterListener(
        MilterListenerSettings(address="inet:127.0.0.1:0"), pipeline=lambda: chain
    )
    await listener.start()
    yield listener
    await listener.stop()


async def open_milter(
    listener: MilterListener,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(c.encode(c.OptNeg(6, int(ALL_ACTIONS), 0x1FFFFF)))
    decoder = c.FrameDecoder("replies")
    while not (frames := decoder.feed(await reader.read(65536))):
        pass
    reply = frames[0]
    assert isinstance(reply, c.OptNegReply) and Step(reply.protocol) & Step.NOHDRS
    writer.write(c.encode(c.Connect(b"client.test", b"4", 4000, b"192.0.2.1")))
    writer.write(c.encode(c.Mail(b"<a@example.com>")))
    await writer.drain()
    return reader, writer


async def closed(reader: asyncio.StreamReader) -> bool:
    """True when the listener closed the connection (read to the end)."""
    try:
        while await asyncio.wait_for(reader.read(1 << 20), 5):
            pass
    except ConnectionError:
        pass
    return True


async def test_headers_that_were_not_asked_for_are_not_kept(milter: MilterListener) -> None:
    _, writer = await open_milter(milter)
    before = rss()
    value = b"v" * (MIB - 100)
    for i in range(200):
        writer.write(c.encode(c.Header(b"X-Flood-%d" % i, value)))
        await writer.drain()
        if i == 100:
            during = rss()
    await asyncio.sleep(0.2)
    after = rss()
    assert during - before < GROWTH and after - before < GROWTH, (before, during, after)
    writer.write(c.encode(c.Quit()))
    writer.close()


async def test_a_macro_flood_closes_the_connection(milter: MilterListener) -> None:
    reader, writer = await open_milter(milter)
    before = rss()
    with structlog.testing.capture_logs() as logs:
        for i in range(300):
            frame = c.Macro(b"M", ((b"{flood_%d}" % i, b"m" * (MIB - 100)),))
            try:
                writer.write(c.encode(frame))
                await writer.drain()
            except ConnectionError:
                break
        assert await closed(reader)
    after = rss()
    assert after - before < GROWTH, (before, after)
    assert any(e["event"] == "milter protocol error, closing connection" for e in logs)


async def test_many_macro_names_close_the_connection(milter: MilterListener) -> None:
    reader, writer = await open_milter(milter)
    with structlog.testing.capture_logs() as logs:
        for i in range(20):
            pairs = tuple((b"{n%d_%d}" % (i, j), b"x") for j in range(100))
            try:
                writer.write(c.encode(c.Macro(b"R", pairs)))
                await writer.drain()
            except ConnectionError:
                break
        assert await closed(reader)
    (event,) = [e for e in logs if e["event"] == "milter protocol error, closing connection"]
    assert "1000 names" in event["reason"]


async def test_too_many_headers_close_the_connection() -> None:
    class ReadsHeaders:
        @hookimpl
        def on_headers(self) -> None:
            """Reads headers: they are asked for and kept, up to the limit."""

    chain = Pipeline([EnabledPlugin("headers", ReadsHeaders())])
    settings = MilterListenerSettings(address="inet:127.0.0.1:0", max_headers=50)
    listener = MilterListener(settings, pipeline=lambda: chain)
    await listener.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(c.encode(c.OptNeg(6, int(ALL_ACTIONS), 0x1FFFFF)))
        writer.write(c.encode(c.Connect(b"client.test", b"4", 4000, b"192.0.2.1")))
        writer.write(c.encode(c.Mail(b"<a@example.com>")))
        writer.write(b"".join(c.encode(c.Header(b"X-%d" % i, b"v")) for i in range(51)))
        await writer.drain()
        with structlog.testing.capture_logs() as logs:
            assert await closed(reader)
        assert any("50 fields" in e.get("reason", "") for e in logs)
    finally:
        await listener.stop()


async def test_a_policy_session_of_new_attribute_names_is_bounded() -> None:
    chain = Pipeline([])
    listener = PolicyListener(PolicyListenerSettings(address="127.0.0.1:0"), pipeline=lambda: chain)
    await listener.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        before = rss()
        answered = 0
        with structlog.testing.capture_logs() as logs:
            for i in range(1500):
                request = {
                    "request": "smtpd_access_policy",
                    "protocol_state": "RCPT",
                    "client_address": "192.0.2.1",
                    "client_port": "4000",
                    "instance": "i1",
                    "recipient": "b@example.net",
                    **{f"x_{i}_{j}": "v" * 1000 for j in range(60)},
                }
                try:
                    writer.write(encode_request(request))
                    await writer.drain()
                    if not await asyncio.wait_for(reader.readuntil(b"\n\n"), 5):
                        break
                except (ConnectionError, asyncio.IncompleteReadError):
                    break
                answered += 1
        after = rss()
        assert answered < 20  # closed once the session passed 1000 names
        assert after - before < GROWTH, (before, after)
        assert any(e["event"] == "policy protocol error, closing connection" for e in logs)
    finally:
        await listener.stop()
