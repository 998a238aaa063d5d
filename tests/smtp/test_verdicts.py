"""Plugin verdicts become replies; the pipeline sees every stage; egress failures give 4xx."""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

import pytest

from mailgate import Verdict, hookimpl
from mailgate.egress import Reply
from mailgate.message import Header
from mailgate.session import Address, Session, Transaction
from tests.peers.smtp_sink import SmtpSink
from tests.smtp.conftest import GatewayFactory, relay_to
from tests.smtp.helpers import RecordingEgress, wait_until

MESSAGE = b"From: a@example.com\r\nSubject: verdicts\r\n\r\nbody\r\n"


class Recorder:
    """Records every stage it is called for."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.headers: list[Header] = []
        self.outcomes: list[Verdict] = []

    @hookimpl
    def on_connect(self, session: Session) -> None:
        self.calls.append(f"connect {session.client_ip}")

    @hookimpl
    def on_helo(self, name: str) -> None:
        self.calls.append(f"helo {name}")

    @hookimpl
    def on_mail(self, sender: Address) -> None:
        self.calls.append(f"mail {sender.address}")

    @hookimpl
    def on_rcpt(self, recipient: Address) -> None:
        self.calls.append(f"rcpt {recipient.address}")

    @hookimpl
    def on_data(self) -> None:
        self.calls.append("data")

    @hookimpl
    def on_headers(self, headers: list[Header]) -> None:
        self.calls.append("headers")
        self.headers = headers

    @hookimpl
    def on_message(self, transaction: Transaction) -> None:
        self.calls.append("message")
        transaction.add_header("X-Seen", "yes")

    @hookimpl
    def on_outcome(self, verdict: Verdict) -> None:
        self.calls.append(f"outcome {verdict.kind.value}")
        self.outcomes.append(verdict)

    @hookimpl
    def on_disconnect(self) -> None:
        self.calls.append("disconnect")


class Decides:
    """Answers `verdict` at `stage` for recipients or senders containing `trigger`."""

    def __init__(self, stage: str, verdict: Verdict) -> None:
        self.stage, self.verdict = stage, verdict

    def _at(self, stage: str) -> Verdict | None:
        return self.verdict if stage == self.stage else None

    @hookimpl
    def on_mail(self) -> Verdict | None:
        return self._at("mail")

    @hookimpl
    def on_rcpt(self) -> Verdict | None:
        return self._at("rcpt")

    @hookimpl
    def on_data(self) -> Verdict | None:
        return self._at("data")

    @hookimpl
    def on_headers(self) -> Verdict | None:
        return self._at("headers")

    @hookimpl
    async def on_message(self) -> Verdict | None:
        return self._at("message")


def send(port: int) -> list[tuple[int, bytes]]:
    """One transaction; the replies to MAIL, RCPT, DATA (or its end), as far as they go."""
    replies: list[tuple[int, bytes]] = []
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo("client.test")
        replies.append(client.mail("a@example.com"))
        replies.append(client.rcpt("b@example.net"))
        if replies[-1][0] == 421:
            return replies
        code, text = client.docmd("DATA")
        if code == 354:
            client.send(MESSAGE + b".\r\n")
            code, text = client.getreply()
        replies.append((code, text))
        try:
            client.quit()
        except smtplib.SMTPServerDisconnected:
            replies.append((0, b"disconnected"))
    return replies


def test_every_stage_reaches_the_pipeline_in_order(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    recorder = Recorder()
    gateway = gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path), [recorder])
    assert [r[0] for r in send(gateway.port)] == [250, 250, 250]
    wait_until(lambda: "disconnect" in recorder.calls)
    assert recorder.calls == [
        "connect 127.0.0.1",
        "helo client.test",
        "mail a@example.com",
        "rcpt b@example.net",
        "data",
        "headers",
        "message",
        "outcome accept",
        "disconnect",
    ]
    assert [h.name for h in recorder.headers] == ["Received", "From", "Subject"]
    (got,) = smtp_sink.messages()
    assert got.header("X-Seen") == "yes"


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data", "headers", "message"])
def test_reject_verdict_is_the_reply_with_the_plugins_code(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path, stage: str
) -> None:
    verdict = Verdict.reject(554, "5.7.9", "Not at this stage")
    gateway = gateway_factory(
        relay_to(smtp_sink.host, smtp_sink.port, tmp_path), [Decides(stage, verdict)]
    )
    replies = send(gateway.port)
    assert (554, b"5.7.9 Not at this stage") in replies
    assert smtp_sink.messages() == []


@pytest.mark.parametrize("stage", ["mail", "rcpt", "message"])
def test_a_multi_line_verdict_is_a_multi_line_reply(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path, stage: str
) -> None:
    verdict = Verdict.reject(550, "5.7.1", "Refused by policy\nSee https://example.org/why")
    gateway = gateway_factory(
        relay_to(smtp_sink.host, smtp_sink.port, tmp_path), [Decides(stage, verdict)]
    )
    replies = send(gateway.port)
    assert (550, b"5.7.1 Refused by policy\n5.7.1 See https://example.org/why") in replies
    assert smtp_sink.messages() == []


def test_tempfail_at_end_of_data_is_a_4xx_and_nothing_is_relayed(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    decides = Decides("message", Verdict.tempfail(451, "4.7.1", "Later"))
    gateway = gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path), [decides])
    assert send(gateway.port)[-1] == (451, b"4.7.1 Later")
    assert smtp_sink.messages() == []


def test_discard_answers_250_and_delivers_nothing(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    decides = Decides("message", Verdict.discard(reason="test"))
    gateway = gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path), [decides])
    assert send(gateway.port)[-1][0] == 250
    assert smtp_sink.messages() == []


def test_quarantine_hands_the_message_over_marked_for_quarantine(
    gateway_factory: GatewayFactory,
) -> None:
    egress = RecordingEgress()
    decides = Decides("message", Verdict.quarantine(reason="suspicious"))
    gateway = gateway_factory(egress, [decides])
    assert send(gateway.port)[-1][0] == 250
    (delivered,) = egress.delivered
    assert delivered.quarantined == "suspicious"


def test_disconnect_verdict_answers_421_and_closes(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(RecordingEgress(), [Decides("rcpt", Verdict.disconnect("Bye now"))])
    replies = send(gateway.port)
    assert replies[1] == (421, b"4.7.0 Bye now")


@pytest.mark.parametrize("step", ["begin", "rcpt", "deliver"])
def test_crashing_egress_gives_a_temporary_failure(
    gateway_factory: GatewayFactory, step: str
) -> None:
    egress = RecordingEgress(fail_at=step)
    gateway = gateway_factory(egress)
    replies = send(gateway.port)
    index = {"begin": 0, "rcpt": 1, "deliver": 2}[step]
    assert replies[index][0] == 451
    assert egress.delivered == []


def test_egress_timeout_gives_a_temporary_failure(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(RecordingEgress(delay=1.0), egress_timeout=0.2)
    assert send(gateway.port)[0][:2] == (451, b"4.4.2 Downstream timed out, try again later")


def test_no_250_before_the_downstream_accepted(gateway_factory: GatewayFactory) -> None:
    egress = RecordingEgress(deliver_reply=Reply(554, "5.7.1", "Downstream says no"))
    gateway = gateway_factory(egress)
    assert send(gateway.port)[-1] == (554, b"5.7.1 Downstream says no")


def test_connect_reject_allows_only_quit(gateway_factory: GatewayFactory) -> None:
    class Refuse:
        @hookimpl
        def on_connect(self) -> Verdict:
            return Verdict.reject(554, "5.7.1", "Go away")

    gateway = gateway_factory(RecordingEgress(), [Refuse()])
    with smtplib.SMTP() as client:
        code, text = client.connect("127.0.0.1", gateway.port)
        assert code == 554 and b"Go away" in text
        assert client.ehlo("client.test")[0] == 503
        assert client.docmd("MAIL", "FROM:<a@example.com>")[0] == 503
        assert client.quit()[0] == 221


def test_plugin_crash_applies_its_error_policy(gateway_factory: GatewayFactory) -> None:
    from mailgate.pipeline import EnabledPlugin, ErrorPolicy

    class Crashes:
        @hookimpl
        def on_rcpt(self) -> Any:
            raise RuntimeError("boom")

    plugin = EnabledPlugin("crashes", Crashes(), on_error=ErrorPolicy.TEMPFAIL)
    gateway = gateway_factory(RecordingEgress(), [plugin])
    assert send(gateway.port)[1][0] == 451


def test_a_plugin_returning_nonsense_gives_a_temporary_failure(
    gateway_factory: GatewayFactory,
) -> None:
    class Nonsense:
        @hookimpl
        def on_message(self) -> Any:
            return "yes please"

    egress = RecordingEgress()
    gateway = gateway_factory(egress, [Nonsense()])
    assert send(gateway.port)[-1][0] == 451
    assert egress.delivered == []


class RefusalsSeen:
    """Records every `on_rcpt_refused`: the recipient and the code and status refused with."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, str, str]] = []

    @hookimpl
    def on_rcpt_refused(self, recipient: Address, verdict: Verdict) -> None:
        self.seen.append((recipient.address, verdict.code, verdict.status, verdict.reason))


def test_a_recipient_refused_by_a_plugin_is_reported_to_every_plugin(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    seen = RefusalsSeen()
    refuser = Decides("rcpt", Verdict.reject(550, "5.1.1", "No such user", reason="unknown"))
    gateway = gateway_factory(relay_to(smtp_sink.host, smtp_sink.port, tmp_path), [refuser, seen])
    assert send(gateway.port)[1] == (550, b"5.1.1 No such user")
    assert seen.seen == [("b@example.net", 550, "5.1.1", "unknown")]


def test_a_recipient_the_downstream_refused_is_reported(
    gateway_factory: GatewayFactory, smtp_sink_factory: Any, tmp_path: Path
) -> None:
    sink = smtp_sink_factory(hard_reject=["RCPT"])
    seen = RefusalsSeen()
    gateway = gateway_factory(relay_to(sink.host, sink.port, tmp_path), [seen])
    code = send(gateway.port)[1][0]
    assert code // 100 == 5
    assert [(rcpt, c // 100, reason) for rcpt, c, _, reason in seen.seen] == [
        ("b@example.net", 5, "refused downstream")
    ]
