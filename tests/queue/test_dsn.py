"""Retries, expiry and DSNs, end to end on SQLite and PostgreSQL: through the SMTP listener, to
real Postfix and smtp-sink; every DSN that arrives is parsed with Python's email package."""

from __future__ import annotations

import asyncio
import smtplib
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from pathlib import Path
from typing import cast

import pytest
import structlog
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from mailgate.config import ConfigError
from mailgate.loader import load_config
from mailgate.queue import records
from mailgate.session import Address
from mailgate.store import Store, StoreSettings
from mailgate.store.schema import BOUNCED, messages, recipients
from tests.peers.postfix import Postfix
from tests.peers.smtp_sink import SinkTransaction, SmtpSink, SmtpSinkFactory
from tests.peers.workdir import PeerDirs
from tests.queue.conftest import AppFactory
from tests.queue.helpers import message, store_rows
from tests.queue.test_accept_and_deliver import wait_for

HOSTNAME = "mailgate.test"
FAST = {"hostname": HOSTNAME, "min_backoff": 0.2, "max_backoff": 0.5}
"""Retry times for tests: fractions of seconds."""


def send_with(
    port: int,
    sender: str,
    rcpts: dict[str, list[str]],
    data: bytes,
    mail_options: list[str] | None = None,
) -> int:
    """One message with ESMTP parameters (`rcpts`: address -> RCPT options); the final code."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.net")
        assert client.has_extn("dsn")
        code, text = client.mail(sender, mail_options or [])
        assert code == 250, text
        for rcpt, options in rcpts.items():
            code, text = client.rcpt(rcpt, options)
            assert code == 250, (rcpt, text)
        code, _ = client.data(data)
        return code


def split(got: list[SinkTransaction]) -> tuple[list[SinkTransaction], list[SinkTransaction]]:
    """The messages and the DSNs (sent from <>) the sink received."""
    return [m for m in got if m.mail_from], [m for m in got if not m.mail_from]


def field_blocks(part: Message) -> list[dict[str, str]]:
    """The header-style field blocks of a ``message/delivery-status`` part, or of a
    ``message/global-delivery-status`` one (RFC 6533: the same blocks)."""
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    if part.get_content_type() == "message/global-delivery-status":
        # Python's parser splits only message/delivery-status into its blocks; it reads the
        # global form as one message: the first block its header, the others its body.
        [whole] = blocks
        body = cast(Message, whole).get_payload()
        assert isinstance(body, str)
        parser = HeaderParser(policy=policy.default)
        rest = [parser.parsestr(block) for block in body.split("\r\n\r\n") if block.strip()]
        blocks = [whole, *rest]
    return [dict(cast(Message, b).items()) for b in blocks]


def parse_report(
    data: bytes,
) -> tuple[EmailMessage, dict[str, str], list[dict[str, str]], EmailMessage]:
    """A DSN checked against RFC 3464's structure: the message, its per-message fields, the
    per-recipient field blocks, and the returned message part."""
    report = message_from_bytes(data, policy=policy.default)
    assert isinstance(report, EmailMessage)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["From"] == f"Mail Delivery System <MAILER-DAEMON@{HOSTNAME}>"
    assert report["Auto-Submitted"] == "auto-replied"
    human, status, returned = report.iter_parts()
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert returned.get_content_type() in ("message/rfc822", "text/rfc822-headers")
    per_message, *per_recipient = field_blocks(status)
    assert per_message["Reporting-MTA"] == f"dns; {HOSTNAME}"
    assert "Arrival-Date" in per_message
    assert per_recipient
    for fields in per_recipient:
        assert {"Final-Recipient", "Action", "Status", "Last-Attempt-Date"} <= set(fields)
    return report, per_message, per_recipient, cast(EmailMessage, returned)


def human_text(report: EmailMessage) -> str:
    """The human-readable part of a report."""
    body = report.get_body(("plain",))
    assert isinstance(body, EmailMessage)
    return str(body.get_content())


async def empty(url: str) -> bool:
    msgs, rcpts = await store_rows(url)
    return not msgs and not rcpts


async def test_a_5xx_recipient_gets_a_dsn_naming_it_the_others_are_delivered(
    queue_app: AppFactory, store_url: str, postfix: Postfix, smtp_sink: SmtpSink
) -> None:
    # Postfix refuses reject*@ with 550; it relays the rest (the DSN too) to the sink.
    app = await queue_app(store_url, f"{postfix.host}:{postfix.port}", queue=FAST)
    rcpts = {
        "ok@example.org": [],
        "reject-me@example.org": ["NOTIFY=FAILURE", "ORCPT=rfc822;Reject+2BMe@example.org"],
    }
    data = message("dsn1@q.test")
    code = await asyncio.to_thread(
        send_with, app.ports[0], "a@example.net", rcpts, data, ["RET=HDRS", "ENVID=QQ+2B314"]
    )
    assert code == 250
    messages, dsns = split(await asyncio.to_thread(smtp_sink.wait_for_messages, 2, 20.0))
    assert [m.rcpts for m in messages] == [("ok@example.org",)]
    (dsn,) = dsns
    assert dsn.rcpts == ("a@example.net",)
    report, per_message, (failed,), returned = parse_report(dsn.data)
    assert report["Subject"] == "Undelivered mail returned to sender"
    assert per_message["Original-Envelope-Id"] == "QQ+314"
    assert failed["Final-Recipient"] == "rfc822; reject-me@example.org"
    assert failed["Original-Recipient"] == "rfc822; Reject+Me@example.org"
    assert failed["Action"] == "failed"
    assert failed["Status"] == "5.1.1"
    assert failed["Remote-MTA"] == f"dns; {postfix.host}"
    assert failed["Diagnostic-Code"].startswith("smtp; 550 5.1.1 ")
    assert "Recipient rejected by test rule" in failed["Diagnostic-Code"]
    # RET=HDRS: the headers only.
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "Message-ID: <dsn1@q.test>" in returned.get_content()
    assert "hello" not in returned.get_content()
    assert "reject-me@example.org" in human_text(report)
    # Both recipients are final and the bounce is notified: nothing is left.
    assert await wait_for(lambda: empty(store_url))


async def test_next_hop_down_sends_one_delay_warning_then_delivers(
    queue_app: AppFactory, store_url: str, peer_dirs: PeerDirs
) -> None:
    sink = SmtpSink(peer_dirs.new("sink"))  # its port is chosen now, the sink starts later
    app = await queue_app(
        store_url, f"127.0.0.1:{sink.port}", queue={**FAST, "delay_warning": 0.4, "max_age": 60.0}
    )
    code = await asyncio.to_thread(
        send_with, app.ports[0], "a@example.net", {"b@example.org": []}, message("dsn2@q.test")
    )
    assert code == 250

    async def warned() -> list[dict[str, object]]:
        msgs, rcpts = await store_rows(store_url)
        late = [m for m in msgs if m["delay_warned"] is not None]
        return late if len(msgs) == 2 and any(r["notified"] == "delay" for r in rcpts) else []

    assert len(await wait_for(warned)) == 1  # the original message is warned about
    await asyncio.sleep(1.5)  # more deferrals: still one warning
    sink.start()
    try:
        messages, dsns = split(await asyncio.to_thread(sink.wait_for_messages, 2, 20.0))
        await asyncio.sleep(0.5)
        assert len(sink.messages()) == 2
    finally:
        sink.stop()
    assert messages[0].header("Message-ID") == "<dsn2@q.test>"
    (dsn,) = dsns
    report, _, (delayed,), returned = parse_report(dsn.data)
    assert report["Subject"].startswith("Delivery delayed")
    assert delayed["Action"] == "delayed"
    assert delayed["Status"] == "4.4.1"
    assert delayed["Diagnostic-Code"].startswith("X-mailgate; 451 4.4.1 Downstream unavailable")
    assert "Remote-MTA" not in delayed  # no MTA answered
    assert "Will-Retry-Until" in delayed
    assert returned.get_content_type() == "text/rfc822-headers"  # a delay: headers only
    assert await wait_for(lambda: empty(store_url))


async def test_expiry_bounces_with_a_dsn_saying_so_per_rule(
    queue_app: AppFactory, store_url: str, postfix: Postfix, smtp_sink: SmtpSink
) -> None:
    # Postfix answers tempfail*@ with 450, for ever. max_age is a rule: 1 s for fast.example.
    max_age = [{"if": 'rcpt.domain == "fast.example"', "then": 1.0}, {"else": 60.0}]
    app = await queue_app(
        store_url, f"{postfix.host}:{postfix.port}", queue={**FAST, "max_age": max_age}
    )
    rcpts: dict[str, list[str]] = {"tempfail-1@fast.example": [], "tempfail-2@example.org": []}
    code = await asyncio.to_thread(
        send_with, app.ports[0], "a@example.net", rcpts, message("dsn3@q.test")
    )
    assert code == 250
    (dsn,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1, 20.0)
    assert dsn.mail_from == "" and dsn.rcpts == ("a@example.net",)
    report, _, (failed,), returned = parse_report(dsn.data)
    assert failed["Final-Recipient"] == "rfc822; tempfail-1@fast.example"
    assert (failed["Action"], failed["Status"]) == ("failed", "4.4.7")
    assert failed["Diagnostic-Code"].startswith("smtp; 450 4.2.1 ")  # the last reply
    assert "delivery time expired" in human_text(report)
    # No RET: the whole message comes back (the default, dsn_return = "full").
    assert returned.get_content_type() == "message/rfc822"
    assert b"Message-ID: <dsn3@q.test>" in returned.as_bytes()
    _, stored = await store_rows(store_url)
    states = {r["address"]: (r["state"], r["notified"]) for r in stored}
    assert states["tempfail-1@fast.example"] == ("bounced", "failure")
    assert states["tempfail-2@example.org"] == ("deferred", None)  # its max_age is 60 s


async def test_no_dsn_to_the_null_sender_nor_with_notify_never(
    queue_app: AppFactory, store_url: str, postfix: Postfix, smtp_sink: SmtpSink
) -> None:
    app = await queue_app(store_url, f"{postfix.host}:{postfix.port}", queue=FAST)
    port = app.ports[0]
    bounce: dict[str, list[str]] = {"reject-1@example.org": []}
    with structlog.testing.capture_logs() as logs:
        code = await asyncio.to_thread(send_with, port, "", bounce, message("dsn4@q.test"))
        assert code == 250
        assert await wait_for(lambda: empty(store_url))
    (dropped,) = [e for e in logs if e["event"].startswith("bounce of a bounce dropped")]
    assert dropped["rcpt"] == "reject-1@example.org"
    never = {"reject-2@example.org": ["NOTIFY=NEVER"], "ok@example.org": ["NOTIFY=NEVER"]}
    code = await asyncio.to_thread(send_with, port, "a@example.net", never, message("dsn5@q.test"))
    assert code == 250
    # A control: the same refusal without NOTIFY=NEVER does get its DSN.
    control: dict[str, list[str]] = {"reject-3@example.org": []}
    code = await asyncio.to_thread(send_with, port, "c@example.net", control, message("dsn6@q"))
    assert code == 250
    await asyncio.to_thread(smtp_sink.wait_for_messages, 2, 20.0)
    assert await wait_for(lambda: empty(store_url))  # everything final, nothing kept
    messages, dsns = split(smtp_sink.messages())
    assert [m.rcpts for m in messages] == [("ok@example.org",)]
    assert [d.rcpts for d in dsns] == [("c@example.net",)]
    _, _, (failed,), _ = parse_report(dsns[0].data)
    assert failed["Final-Recipient"] == "rfc822; reject-3@example.org"


async def test_notify_success_is_the_next_hops_when_it_offers_dsn(
    queue_app: AppFactory, store_url: str, smtp_sink: SmtpSink
) -> None:
    app = await queue_app(store_url, f"127.0.0.1:{smtp_sink.port}", queue=FAST)
    rcpts = {"b@example.org": ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b@example.org"]}
    mail = ["RET=HDRS", "ENVID=env-7"]
    code = await asyncio.to_thread(
        send_with, app.ports[0], "a@example.net", rcpts, message("dsn7@q.test"), mail
    )
    assert code == 250
    (got,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1, 20.0)
    # Passed on: the next hop reports the success itself.
    assert {"RET=HDRS", "ENVID=env-7"} <= set(got.mail_params)
    assert got.rcpt_params == (("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b@example.org"),)
    assert await wait_for(lambda: empty(store_url))
    assert len(smtp_sink.messages()) == 1  # no DSN from mailgate


async def test_notify_success_to_a_next_hop_without_dsn_is_reported_relayed(
    queue_app: AppFactory, store_url: str, smtp_sink_factory: SmtpSinkFactory
) -> None:
    sink = smtp_sink_factory(dsn=False)
    app = await queue_app(store_url, f"127.0.0.1:{sink.port}", queue=FAST)
    rcpts = {"b@example.org": ["NOTIFY=SUCCESS"], "c@example.org": []}
    code = await asyncio.to_thread(
        send_with, app.ports[0], "a@example.net", rcpts, message("dsn8@q.test"), ["ENVID=e8"]
    )
    assert code == 250
    messages, dsns = split(await asyncio.to_thread(sink.wait_for_messages, 2, 20.0))
    assert messages[0].rcpt_params == ((), ())  # nothing the next hop does not offer
    assert "ENVID=e8" not in messages[0].mail_params
    (dsn,) = dsns
    report, per_message, (relayed,), returned = parse_report(dsn.data)
    assert per_message["Original-Envelope-Id"] == "e8"
    assert relayed["Final-Recipient"] == "rfc822; b@example.org"  # not c@: no NOTIFY=SUCCESS
    assert (relayed["Action"], relayed["Status"]) == ("relayed", "2.0.0")
    assert relayed["Remote-MTA"] == "dns; 127.0.0.1"
    assert returned.get_content_type() == "text/rfc822-headers"
    assert report["Subject"] == "Delivery report: your message was relayed"
    assert await wait_for(lambda: empty(store_url))


def test_retry_settings_take_rules_and_refuse_nonsense(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text(
        "[queue]\nmax_age = [{ if = 'sender.domain == \"example.net\"', then = 3600.0 },"
        " { else = 86400.0 }]\ndelay_warning = 14400\n"
    )
    config = load_config(tmp_path)
    assert config.queue is not None
    assert config.queue.max_age.default == 86400.0
    assert config.queue.delay_warning.default == 14400.0
    (tmp_path / "mailgate.toml").write_text("[queue]\ndelay_warning = -1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.key == "queue.delay_warning"
    (tmp_path / "mailgate.toml").write_text('[queue]\ndsn_return = "body"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.key == "queue.dsn_return"


@pytest.mark.parametrize("holder", ["n1", "n2"])
async def test_reports_are_queued_with_the_outcome_by_the_lease_holder_only(
    store_url: str, holder: str
) -> None:
    store = Store(StoreSettings(url=store_url))
    await store.open()
    try:
        original = records.NewMessage.create(
            Address("a@example.net"),
            [Address("b@example.org")],
            b"S: x\r\n\r\nb\r\n",
            8,
            "n1",
            transaction="t1",
        )
        report = records.NewMessage.create(
            Address(""),
            [Address("a@example.net")],
            b"S: dsn\r\n\r\nb\r\n",
            10,
            "n1",
            transaction="dsn",
        )

        async def setup(conn: AsyncConnection) -> None:
            await conn.execute(messages.insert(), [original.message])
            await conn.execute(recipients.insert(), original.recipients)
            await conn.execute(
                update(messages).where(messages.c.id == original.id).values(lease_owner=holder)
            )

        await store.transaction(setup)
        bounced = records.Outcome(0, BOUNCED, 1, None, "550 5.1.1 no", notified="failure")
        left = await store.transaction(
            lambda conn: records.record(conn, original.id, "n1", [bounced], reports=[report])
        )
    finally:
        await store.close()
    assert left == "done"  # the one recipient is final: the message goes
    msgs, rcpts = await store_rows(store_url)
    if holder == "n1":
        assert [(m["id"], m["sender"]) for m in msgs] == [(report.id, "")]
        assert [r["address"] for r in rcpts] == ["a@example.net"]
    else:  # n1 lost its lease to n2: n2's attempt reports
        assert msgs == []
