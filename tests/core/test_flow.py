"""`SessionFlow`: recipients joining, which verdict wins, quarantine, outcomes and the log.

The flow runs here with a real relay to smtp-sink, or with `MtaEgress` (nothing sent), and
plugins made for each test; the listeners' own tests run the same flow through their protocols.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailgate.egress import MtaEgress, Reply
from mailgate.flow import FlowSettings, SessionFlow
from mailgate.metrics import Metrics
from mailgate.pipeline import EnabledPlugin, Pipeline
from mailgate.plugin import hookimpl
from mailgate.quarantine import QuarantineStore
from mailgate.relay import RelayEgress
from mailgate.session import Address, Session, Transaction
from mailgate.verdict import Verdict
from tests.logs import captured_logs, events
from tests.peers.smtp_sink import SmtpSink
from tests.relay.helpers import message, settings_for

__all__ = ["captured_logs"]


class Chain:
    """A plugin whose decisions are set per test, and which records refused recipients."""

    def __init__(self, **verdicts: Verdict) -> None:
        self.verdicts = verdicts
        self.refused: list[tuple[str, int]] = []
        self.outcomes: list[Verdict] = []

    @hookimpl
    def on_rcpt(self, recipient: Address) -> Verdict | None:
        return self.verdicts.get(recipient.local_part)

    @hookimpl
    def on_message(self) -> Verdict | None:
        return self.verdicts.get("message")

    @hookimpl
    def on_rcpt_refused(self, recipient: Address, verdict: Verdict) -> None:
        self.refused.append((recipient.address, verdict.code))

    @hookimpl
    def on_outcome(self, verdict: Verdict) -> None:
        self.outcomes.append(verdict)


def flow_for(chain: Chain, egress: Any, **kw: Any) -> tuple[SessionFlow, Metrics]:
    metrics = Metrics()
    pipeline = Pipeline([EnabledPlugin("chain", chain)], observers=[metrics])
    return SessionFlow(pipeline, Session("192.0.2.1", 4000, helo="c.test"), egress, **kw), metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_a_quarantined_message_is_stored_and_never_relayed(
    smtp_sink: SmtpSink, tmp_path: Path, captured_logs: list[dict[str, Any]]
) -> None:
    egress = RelayEgress(settings_for(smtp_sink.host, smtp_sink.port))
    store = QuarantineStore(tmp_path)
    chain = Chain(message=Verdict.quarantine(reason="looks like phishing"))
    flow, metrics = flow_for(chain, egress, quarantine=store)
    await flow.open()
    assert await flow.mail(Address("a@example.com")) is None
    assert await flow.rcpt(Address("b@example.net")) is None
    tx = flow.tx
    assert tx is not None
    tx.message = message(b"suspicious\r\n")
    tx.add_header("X-Scanned", "yes")
    ending = await flow.end_of_data()
    assert egress.pool.idle == 1  # the downstream transaction was reset, the connection kept
    await flow.close()
    assert ending.reply.code == 250 and "held as" in ending.reply.text
    assert smtp_sink.messages() == []
    (entry,) = store.entries()
    assert entry["reason"] == "looks like phishing" and entry["sender"] == "a@example.com"
    assert [r["address"] for r in entry["recipients"]] == ["b@example.net"]
    (eml,) = tmp_path.glob("*.eml")
    assert eml.read_bytes().endswith(b"X-Scanned: yes\r\n\r\nsuspicious\r\n")
    (outcome,) = events(captured_logs, "message outcome")
    assert outcome["verdict"] == "quarantine" and outcome["tx"] == tx.id
    assert sample(metrics, "mailgate_messages_total", ingress="smtp", listener="smtp",
                  outcome="quarantined") == 1  # fmt: skip
    await egress.close()


async def test_an_unwritable_quarantine_is_a_451_and_nothing_is_relayed(
    smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    egress = RelayEgress(settings_for(smtp_sink.host, smtp_sink.port))
    flow, _ = flow_for(Chain(), egress, quarantine=QuarantineStore(blocker))
    await flow.open()
    await flow.mail(Address("a@example.com"))
    await flow.rcpt(Address("b@example.net"))
    assert flow.tx is not None
    flow.tx.message = message()
    flow.tx.quarantine("x")
    ending = await flow.end_of_data()
    assert (ending.reply.code, ending.reply.status) == (451, "4.3.0")
    assert ending.verdict.kind.value == "tempfail"
    assert smtp_sink.messages() == []
    await flow.close()
    await egress.close()


async def test_refusals_are_logged_with_who_refused_and_reported_to_plugins(
    smtp_sink_factory: Any, captured_logs: list[dict[str, Any]]
) -> None:
    sink = smtp_sink_factory(hard_reject=["RCPT"])
    egress = RelayEgress(settings_for(sink.host, sink.port))
    chain = Chain(spam=Verdict.reject(550, "5.7.1", "No", reason="listed"))
    flow, metrics = flow_for(chain, egress, settings=FlowSettings(max_recipients=5))
    await flow.open()
    await flow.mail(Address("a@example.com"))
    for rcpt in ("spam@example.net", "x@example.net", "y@example.net"):
        verdict = await flow.rcpt(Address(rcpt))
        assert verdict is not None and verdict.is_refusal
    await flow.close()
    refused = events(captured_logs, "recipient refused")
    # smtp-sink's hard reject is "500 5.0.0 Error: command failed".
    assert [(r["rcpt"], r["code"], r["by"]) for r in refused] == [
        ("spam@example.net", 550, "chain"),
        ("x@example.net", 500, "downstream"),
        ("y@example.net", 500, "downstream"),
    ]
    assert chain.refused == [(r["rcpt"], r["code"]) for r in refused]
    # Every recipient refused: the transaction ends as that refusal, in the log and metrics.
    (outcome,) = events(captured_logs, "message outcome")
    assert outcome["verdict"] == "reject" and chain.outcomes[-1].code == 500
    assert sample(metrics, "mailgate_messages_total", ingress="smtp", listener="smtp",
                  outcome="rejected") == 1  # fmt: skip
    await egress.close()


async def test_the_recipient_limit_is_the_flows(captured_logs: list[dict[str, Any]]) -> None:
    flow, _ = flow_for(Chain(), MtaEgress(), settings=FlowSettings(max_recipients=1))
    await flow.open()
    await flow.mail(Address("a@example.com"))
    assert await flow.rcpt(Address("one@example.net")) is None
    refusal = await flow.rcpt(Address("two@example.net"))
    assert refusal is not None and (refusal.code, refusal.status) == (452, "4.5.3")
    assert events(captured_logs, "recipient refused")[-1]["by"] == "listener"
    await flow.close()


async def test_an_unreachable_downstream_is_a_warning_a_metric_and_a_plain_451(
    captured_logs: list[dict[str, Any]],
) -> None:
    from tests.peers.ports import free_port

    port = free_port("127.0.0.1")  # nothing listens there
    egress = RelayEgress(settings_for("127.0.0.1", port))
    flow, metrics = flow_for(Chain(), egress)
    await flow.open()
    refusal = await flow.mail(Address("a@example.com"))
    assert refusal is not None and (refusal.code, refusal.status) == (451, "4.4.1")
    assert "Errno" not in refusal.text and "refused" not in refusal.text.lower()
    (warning,) = events(captured_logs, "downstream failed")
    assert warning["level"] == "warning" and warning["downstream"] == f"relay 127.0.0.1:{port}"
    assert "Connection refused" in warning["error"] and warning["session"] == flow.session.id
    assert (
        sample(
            metrics,
            "mailgate_downstream_errors_total",
            downstream=f"relay 127.0.0.1:{port}",
            kind="unavailable",
        )
        == 1
    )
    await flow.close()


async def test_an_earlier_discard_applies_at_the_end_unless_the_message_is_refused() -> None:
    discard = Verdict.discard(reason="bulk")
    chain = Chain(bulk=discard)
    flow, _ = flow_for(chain, MtaEgress())
    await flow.open()
    await flow.mail(Address("a@example.com"))
    await flow.rcpt(Address("bulk@example.net"))
    assert flow.tx is not None
    flow.tx.message = message()
    ending = await flow.end_of_data()
    assert ending.verdict.kind.value == "discard" and not ending.delivered
    chain.verdicts["message"] = Verdict.reject(550, "5.7.1", "Virus", reason="eicar")
    await flow.mail(Address("a@example.com"))
    await flow.rcpt(Address("bulk@example.net"))
    flow.tx.message = message()
    ending = await flow.end_of_data()
    assert ending.verdict.code == 550
    await flow.close()
    assert [v.kind.value for v in chain.outcomes] == ["discard", "reject"]


async def test_the_mta_egress_check_refuses_the_end_of_data() -> None:
    def check(tx: Transaction) -> Reply | None:
        return Reply(451, "4.3.0", "Filter cannot apply its changes")

    flow, _ = flow_for(Chain(), MtaEgress(check))
    await flow.open()
    await flow.mail(Address("a@example.com"))
    await flow.rcpt(Address("b@example.net"))
    assert flow.tx is not None
    flow.tx.message = message()
    ending = await flow.end_of_data()
    assert (ending.verdict.kind.value, ending.reply.code) == ("tempfail", 451)
    await flow.close()
