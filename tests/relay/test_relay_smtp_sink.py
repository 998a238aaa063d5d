"""The relay against smtp-sink, which offers no CHUNKING: DATA with dot transparency."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from mailgate.message import Message, new_spool, parse_header_block
from mailgate.relay import RelayEgress
from tests.peers.smtp_sink import SmtpSink, SmtpSinkFactory
from tests.relay.helpers import HEADERS, message, relay, session, settings_for, transaction


@pytest.fixture
async def egress(smtp_sink: SmtpSink) -> AsyncIterator[RelayEgress]:
    eg = RelayEgress(settings_for(smtp_sink.host, smtp_sink.port))
    yield eg
    await eg.close()


async def test_message_arrives_with_envelope_and_params(
    egress: RelayEgress, smtp_sink: SmtpSink
) -> None:
    tx = transaction(rcpts=["b@example.net", "c@example.net"])
    tx.sender.params = ["SIZE=100", "BODY=8BITMIME", "AUTH=<>", "X-UNKNOWN=1"]
    codes, final = await relay(egress, tx, message(b"Hello\r\n"))
    assert codes == [250, 250, 250]
    assert final == 250
    (got,) = smtp_sink.messages()
    assert got.mail_from == "a@example.com"
    # smtp-sink does not advertise SIZE, and nobody gets AUTH= or unknown parameters.
    assert got.mail_params == ("BODY=8BITMIME",)
    assert got.rcpts == ("b@example.net", "c@example.net")
    # smtp-sink offers XCLIENT: mailgate hands it the client and says EHLO with its name.
    assert got.helo == "client.test"
    assert got.data.endswith(b"\r\n\r\nHello\r\n")


async def test_without_xclient_mailgate_says_ehlo_with_its_own_name(
    egress: RelayEgress, smtp_sink: SmtpSink
) -> None:
    egress.settings.xclient = False
    _, final = await relay(egress, transaction(), message(b"Hello\r\n"))
    assert final == 250
    (got,) = smtp_sink.messages()
    assert got.helo == "relay.test"


async def test_lines_starting_with_a_dot_arrive_unchanged(
    egress: RelayEgress, smtp_sink: SmtpSink
) -> None:
    body = b".\r\n..\r\n.leading dot\r\nmiddle . dot\r\n.\r\n"
    _codes, final = await relay(egress, transaction(), message(body))
    assert final == 250
    (got,) = smtp_sink.messages()
    assert got.data.endswith(b"\r\n\r\n" + body)


async def test_dot_after_chunk_boundary_is_stuffed(
    smtp_sink: SmtpSink,
) -> None:
    # chunk_size puts a chunk boundary right before each "." line.
    eg = RelayEgress(settings_for(smtp_sink.host, smtp_sink.port, chunk_size=1024))
    line = b"x" * 1022 + b"\r\n"
    body = (line + b".dot\r\n") * 300
    try:
        _codes, final = await relay(eg, transaction(), message(body))
    finally:
        await eg.close()
    assert final == 250
    assert smtp_sink.messages()[0].data.endswith(b"\r\n\r\n" + body)


async def test_downstream_rcpt_refusal_reaches_the_client(
    smtp_sink_factory: SmtpSinkFactory,
) -> None:
    sink = smtp_sink_factory(hard_reject=["RCPT"], hard_reply="550 5.1.1 no such user")
    eg = RelayEgress(settings_for(sink.host, sink.port))
    reply, dtx = await eg.begin(session(), transaction())
    assert reply.code == 250 and dtx is not None
    r = await dtx.rcpt(transaction().recipients[0])
    assert (r.code, r.status, r.text) == (550, "5.1.1", "no such user")
    await dtx.abort()
    await eg.close()


async def test_end_of_data_reply_is_returned_verbatim(smtp_sink_factory: SmtpSinkFactory) -> None:
    sink = smtp_sink_factory(soft_reject=["."], soft_reply="452 4.3.1 out of storage today")
    eg = RelayEgress(settings_for(sink.host, sink.port))
    tx = transaction()
    _reply, dtx = await eg.begin(session(), tx)
    assert dtx is not None
    await dtx.rcpt(tx.recipients[0])
    tx.message = message()
    final = await dtx.deliver(session(), tx)
    assert (final.code, final.status, final.text) == (452, "4.3.1", "out of storage today")
    await eg.close()


async def test_unreachable_downstream_gives_451(smtp_sink: SmtpSink) -> None:
    from tests.peers.ports import free_port

    eg = RelayEgress(settings_for("127.0.0.1", free_port()))
    reply, dtx = await eg.begin(session(), transaction())
    assert dtx is None
    assert (reply.code, reply.status) == (451, "4.4.1")


async def test_downstream_refusing_at_connect_gives_4xx(smtp_sink_factory: SmtpSinkFactory) -> None:
    sink = smtp_sink_factory(reply_421=["CONNECT"])
    eg = RelayEgress(settings_for(sink.host, sink.port))
    reply, dtx = await eg.begin(session(), transaction())
    assert dtx is None
    assert reply.code == 451 and reply.status == "4.4.1"


async def test_downstream_refusing_ehlo_and_helo_gives_4xx(
    smtp_sink_factory: SmtpSinkFactory,
) -> None:
    sink = smtp_sink_factory(hard_reject=["EHLO", "HELO"])
    eg = RelayEgress(settings_for(sink.host, sink.port))
    reply, dtx = await eg.begin(session(), transaction())
    assert dtx is None and reply.code == 451


async def test_downstream_dying_during_data_gives_451_442(
    smtp_sink_factory: SmtpSinkFactory,
) -> None:
    sink = smtp_sink_factory(disconnect=["."])
    eg = RelayEgress(settings_for(sink.host, sink.port))
    codes, final = await relay(eg, transaction(), message())
    assert codes == [250, 250]
    assert final == 451
    assert eg.pool.idle == 0
    await eg.close()


async def test_downstream_timing_out_gives_451(smtp_sink_factory: SmtpSinkFactory) -> None:
    sink = smtp_sink_factory(command_delays={"MAIL": 3})
    eg = RelayEgress(settings_for(sink.host, sink.port, command_timeout=0.3))
    reply, dtx = await eg.begin(session(), transaction())
    assert dtx is None
    assert (reply.code, reply.status) == (451, "4.4.2")
    await eg.close()


async def test_stale_pooled_connection_is_replaced_transparently(
    smtp_sink_factory: SmtpSinkFactory,
) -> None:
    sink = smtp_sink_factory(timeout=1)  # smtp-sink drops a client idle for a second
    eg = RelayEgress(settings_for(sink.host, sink.port))
    assert (await relay(eg, transaction(), message()))[1] == 250
    await asyncio.sleep(1.5)
    assert (await relay(eg, transaction(), message()))[1] == 250
    assert eg.pool.opened == 2
    assert len(sink.messages()) == 2
    await eg.close()


async def test_idle_connections_are_closed_after_the_idle_timeout(smtp_sink: SmtpSink) -> None:
    eg = RelayEgress(settings_for(smtp_sink.host, smtp_sink.port, idle_timeout=0.2))
    assert (await relay(eg, transaction(), message()))[1] == 250
    assert eg.pool.idle == 1
    await asyncio.sleep(0.4)
    assert eg.pool.idle == 0
    await eg.close()


async def test_pool_keeps_at_most_pool_size_idle_connections(smtp_sink: SmtpSink) -> None:
    eg = RelayEgress(settings_for(smtp_sink.host, smtp_sink.port, pool_size=2))
    results = await asyncio.gather(*(relay(eg, transaction(), message()) for _ in range(5)))
    assert [final for _, final in results] == [250] * 5
    assert eg.pool.opened == 5 and eg.pool.idle == 2
    await eg.close()


async def test_pool_size_zero_opens_a_connection_per_message(smtp_sink: SmtpSink) -> None:
    eg = RelayEgress(settings_for(smtp_sink.host, smtp_sink.port, pool_size=0))
    for _ in range(3):
        assert (await relay(eg, transaction(), message()))[1] == 250
    assert eg.pool.opened == 3 and eg.pool.idle == 0


async def test_50_mib_message_is_streamed_without_buffering(smtp_sink: SmtpSink) -> None:
    spool = new_spool(threshold=1 << 20)
    line = b"." + b"y" * 1021 + b"\r\n"  # every line needs stuffing
    block = line * 1024
    for _ in range(50):
        spool.write(block)
    msg = Message(parse_header_block(HEADERS), spool)
    assert msg.body_size >= 50 << 20
    eg = RelayEgress(settings_for(smtp_sink.host, smtp_sink.port))
    tracemalloc.start()
    try:
        _, final = await relay(eg, transaction(), msg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await eg.close()
    assert final == 250
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB while relaying"
    (dump,) = smtp_sink.dump_dir.iterdir()
    # smtp-sink stores LF line ends, after removing the stuffing dots.
    with dump.open("rb") as f:
        f.seek(-2 * (len(line) - 1) - 1, 2)
        assert f.read() == (line[:-2] + b"\n") * 2 + b"\n"
    assert dump.stat().st_size > 50 * 1024 * (len(line) - 1)
