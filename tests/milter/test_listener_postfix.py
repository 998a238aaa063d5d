"""The milter listener with a real Postfix as its client: verdicts, modifications, macros.

Every test runs over four smtpd listeners of one Postfix: mailgate on TCP and on a unix socket,
each with ``milter_protocol = 6`` and ``2``.
"""

from __future__ import annotations

import asyncio
import smtplib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate import Address, Message, Session, Transaction, Verdict, hookimpl
from mailgate.config import Dynamic
from mailgate.pipeline import ErrorPolicy
from mailgate.plugins.add_header import AddHeader, AddHeaderSettings
from mailgate.plugins.directory.sql import DirectorySql, DirectorySqlSettings
from mailgate.plugins.directory.verify import RecipientVerify, RecipientVerifySettings
from mailgate.plugins.relay_control import RelayControl, RelayControlSettings
from tests.logs import captured_logs, events
from tests.milter.gate import Gate, LoopThread, Route, open_gate, start_listener
from tests.peers.workdir import PeerDirs

__all__ = ["captured_logs"]


@pytest.fixture(scope="module")
def gate(peer_dirs: PeerDirs) -> Iterator[Gate]:
    """mailgate's milter listeners (TCP and unix) behind one Postfix with four smtpd ports."""
    sock_dir = peer_dirs.new("milter")
    listeners = [("tcp", "inet:127.0.0.1:0"), ("unix", f"unix:{sock_dir}/mailgate.sock")]
    with open_gate(peer_dirs.new("postfix"), listeners) as gate:
        yield gate


@pytest.fixture
def routes(gate: Gate) -> Iterator[list[Route]]:
    """The four routes; the chain is emptied after the test."""
    yield gate.routes
    gate.chain.use()


def header(msg: bytes, name: str) -> list[str]:
    """Values of header `name` in a delivered message (unfolded)."""
    from email.parser import BytesHeaderParser

    return [str(v) for v in BytesHeaderParser().parsebytes(msg).get_all(name, [])]


# -- plugins used by the tests --------------------------------------------------------------


class OnMessage:
    """Calls `fn(transaction, message)` at the end of data and returns its result."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    @hookimpl
    def on_message(self, transaction: Transaction, message: Message) -> Verdict | None:
        """Delegate to `fn`."""
        result: Verdict | None = self.fn(transaction, message)
        return result


class OnRcpt:
    """Refuses recipients whose local part starts with ``no``."""

    @hookimpl
    def on_rcpt(self, recipient: Address) -> Verdict | None:
        """Tempfail ``no*`` recipients with our own text."""
        if recipient.local_part.startswith("no"):
            return Verdict.tempfail(452, "4.2.2", "Mailbox full, says the plugin")
        return None


class Recorder:
    """Keeps what each stage saw."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    @hookimpl
    async def on_message(self, session: Session, transaction: Transaction) -> None:
        """Record the session and transaction facts."""
        self.seen.append(
            {
                "ip": session.client_ip,
                "port": session.client_port,
                "name": session.client_name,
                "helo": session.helo,
                "daemon": session.macros.get("daemon_name", ""),
                "queue_id": transaction.queue_id,
                "sender": transaction.sender.address,
                "sender_params": transaction.sender.params,
                "rcpts": [r.address for r in transaction.recipients],
                "ingress": session.ingress,
            }
        )


# -- delivery and verdicts ---------------------------------------------------------------------


def test_message_passes_unchanged_without_plugins(gate: Gate, routes: list[Route]) -> None:
    for route in routes:
        sent = gate.send(route, headers=["Subject: plain"])
        assert sent.returncode == 0, sent.output
        (copy,) = gate.delivered(sent)
        assert header(copy.data, "Subject") == ["plain"], route.name


def test_reject_at_end_of_data_carries_the_plugins_reply(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(OnMessage(lambda tx, msg: Verdict.reject(554, "5.7.9", "Not today, plugin")))
    for route in routes:
        sent = gate.send(route)
        assert sent.returncode != 0, route.name
        assert "554 5.7.9 Not today, plugin" in sent.replies(), (route.name, sent.output)
        assert gate.delivered(sent, timeout=0.3) == []


def test_a_multi_line_reply_reaches_the_client_as_one(gate: Gate, routes: list[Route]) -> None:
    text = "Not today, plugin\nSee https://example.org/why"
    gate.chain.use(OnMessage(lambda tx, msg: Verdict.reject(554, "5.7.9", text)))
    for route in routes:
        sent = gate.send(route)
        assert sent.returncode != 0, route.name
        replies = sent.replies()
        assert "554-5.7.9 Not today, plugin" in replies, (route.name, sent.output)
        assert "554 5.7.9 See https://example.org/why" in replies, (route.name, sent.output)
        assert gate.delivered(sent, timeout=0.3) == []


def test_tempfail_at_rcpt_refuses_only_that_recipient(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(OnRcpt())
    for route in routes:
        sent = gate.send(route, to=["nobody@local.test", "yes@local.test"])
        assert "452 4.2.2 Mailbox full, says the plugin" in sent.replies(), route.name
        (copy,) = gate.delivered(sent)
        assert copy.delivered_to == "yes@local.test"


def test_discard_delivers_nothing_but_says_yes(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(OnMessage(lambda tx, msg: Verdict.discard(reason="test")))
    for route in routes:
        sent = gate.send(route)
        assert sent.returncode == 0, sent.output
        gate.postfix.wait_for_log(rf"{sent.queue_id}: milter-discard")
        assert gate.delivered(sent, timeout=0.3) == []


def test_accept_delivers(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(OnMessage(lambda tx, msg: Verdict.accept()))
    for route in routes:
        sent = gate.send(route)
        assert sent.returncode == 0, sent.output
        assert len(gate.delivered(sent)) == 1


def test_quarantine_puts_the_message_on_hold(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(OnMessage(lambda tx, msg: Verdict.quarantine(reason="looks odd")))
    for route in routes:
        sent = gate.send(route)
        assert sent.returncode == 0, sent.output
        held = [e for e in gate.postfix.queue() if e.queue_id == sent.queue_id]
        assert held and held[0].held, (route.name, gate.postfix.queue())
        gate.postfix.wait_for_log(rf"{sent.queue_id}: milter-hold: END-OF-MESSAGE")


def test_disconnect_verdict_closes_the_client_session(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(OnMessage(lambda tx, msg: Verdict.disconnect("Go away, plugin")))
    for route in routes:
        sent = gate.send(route)
        assert "421 4.7.0 Go away, plugin" in sent.replies(), (route.name, sent.output)


class Outcomes:
    """Refuses senders whose local part is ``refused``; records every `on_outcome`."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Verdict]] = []

    @hookimpl
    def on_mail(self, transaction: Transaction) -> Verdict | None:
        """Refuse ``refused@...`` at MAIL FROM."""
        if transaction.sender.local_part == "refused":
            return Verdict.reject(550, "5.7.1", "Not this sender")
        return None

    @hookimpl
    def on_outcome(self, transaction: Transaction, verdict: Verdict) -> None:
        """Record the sender and the final verdict."""
        self.seen.append((transaction.sender.address, verdict))


def test_on_outcome_as_on_the_smtp_listener(gate: Gate, routes: list[Route]) -> None:
    """A refused sender opens no transaction (no on_outcome); a transaction the client drops
    with RSET (Postfix sends ABORT) ends as an aborted tempfail; a delivered one as accept."""
    outcomes = Outcomes()
    gate.chain.use(outcomes)
    for route in routes:
        outcomes.seen.clear()
        with smtplib.SMTP("127.0.0.1", route.port, timeout=20) as client:
            client.ehlo("client.example")
            assert client.mail("refused@example.com")[0] == 550, route.name
            assert client.mail("dropped@example.com")[0] == 250
            assert client.rcpt("bob@local.test")[0] == 250
            client.rset()
            client.sendmail("kept@example.com", ["bob@local.test"], b"Subject: x\r\n\r\nhi\r\n")
        deadline = time.monotonic() + 5
        while len(outcomes.seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        senders = [sender for sender, _ in outcomes.seen]
        assert senders == ["dropped@example.com", "kept@example.com"], route.name
        (_, dropped), (_, kept) = outcomes.seen
        assert (dropped.code, dropped.reason) == (451, "aborted by the MTA"), route.name
        assert kept.kind.value == "accept", route.name


class RefusalsSeen:
    """Records every `on_rcpt_refused` (which makes the listener ask for SMFIP_RCPT_REJ)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Verdict]] = []

    @hookimpl
    def on_rcpt_refused(self, recipient: Address, verdict: Verdict) -> None:
        """Keep the recipient and the verdict it was refused with."""
        self.seen.append((recipient.address, verdict))


def test_recipients_postfix_refused_reach_on_rcpt_refused(gate: Gate, routes: list[Route]) -> None:
    """With protocol 6 Postfix sends the recipients its own restrictions refused (RCPT_REJ):
    plugins see them with Postfix's status and text; the message goes on to the others.
    Protocol 2 has no RCPT_REJ: nothing is reported there."""
    seen = RefusalsSeen()
    gate.chain.use(seen)
    for route in routes:
        seen.seen.clear()
        sent = gate.send(route, to=["reject-me@local.test", "bob@local.test"])
        assert sent.returncode == 0, sent.output
        assert len(gate.delivered(sent)) == 1, route.name
        if route.protocol == 2:
            assert seen.seen == [], route.name
            continue
        ((rcpt, verdict),) = seen.seen
        assert rcpt == "reject-me@local.test", route.name
        assert (verdict.code, verdict.status) == (550, "5.1.1"), route.name
        assert "Recipient rejected by test rule" in verdict.text, route.name
        assert verdict.reason == "refused by the MTA"


def test_failing_plugin_applies_its_error_policy(gate: Gate, routes: list[Route]) -> None:
    def boom(tx: Transaction, msg: Message) -> None:
        raise RuntimeError("scanner exploded")

    gate.chain.use(OnMessage(boom), on_error=ErrorPolicy.REJECT)
    for route in routes:
        sent = gate.send(route)
        assert "554 5.3.0 Local policy failure" in sent.replies(), (route.name, sent.output)
    gate.chain.use(OnMessage(boom), on_error=ErrorPolicy.ACCEPT)
    sent = gate.send(routes[0])
    assert sent.returncode == 0 and len(gate.delivered(sent)) == 1


def test_no_nagle_stalls_on_the_milter_link(gate: Gate, routes: list[Route]) -> None:
    # Two ~40 ms Nagle/delayed-ACK stalls per connection are what libmilter milters suffer on
    # TCP; with TCP_NODELAY, one write per reply group and TCP_QUICKACK there are none.
    gate.chain.use(OnMessage(lambda tx, msg: tx.add_header("X-Scanned", "yes")))
    for route in routes[::2]:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            with smtplib.SMTP("127.0.0.1", route.port) as smtp:
                smtp.sendmail("a@example.com", ["bob@local.test"], b"Subject: t\r\n\r\nx\r\n")
            times.append(time.perf_counter() - started)
        assert sorted(times)[2] < 0.035, (route.name, times)


# -- modifications -----------------------------------------------------------------------------


def test_add_header(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(OnMessage(lambda tx, msg: tx.add_header("X-Scanned", "by mailgate")))
    for route in routes:
        sent = gate.send(route)
        (copy,) = gate.delivered(sent)
        assert header(copy.data, "X-Scanned") == ["by mailgate"], route.name
        assert b"\nX-Scanned: by mailgate\n" in copy.data


class Withheld:
    """Reads nothing (``reads = frozenset()``); records what the message it is given holds."""

    reads: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.seen: list[tuple[frozenset[str], int, int]] = []

    @hookimpl
    def on_message(self, message: Message) -> None:
        """Record the withheld parts, the header count and the body size."""
        self.seen.append((message.withheld, len(message.headers), message.body_size))


def test_add_header_plugin_is_sent_no_content_and_still_adds_its_header(
    gate: Gate, routes: list[Route]
) -> None:
    # The bundled plugin declares it reads nothing: Postfix is asked for no headers, no end of
    # headers and no body (SMFIP_NOHDRS, NOEOH, NOBODY); its ADDHEADER still applies.
    witness = Withheld()
    gate.chain.use(AddHeader(AddHeaderSettings("X-Mailgate", Dynamic.fixed("passed"))), witness)
    for route in routes:
        sent = gate.send(route, headers=["Subject: kept"], body="Body kept.")
        assert sent.returncode == 0, sent.output
        (copy,) = gate.delivered(sent)
        assert header(copy.data, "X-Mailgate") == ["passed"], route.name
        assert header(copy.data, "Subject") == ["kept"], route.name
        assert copy.data.split(b"\n\n", 1)[1].rstrip() == b"Body kept.", route.name
        # What the plugins were given: nothing from Postfix (the header added by add_header
        # before it is the only one), so Postfix honoured the negotiation.
        assert witness.seen[-1] == (frozenset({"headers", "body"}), 1, 0), route.name


def test_a_header_reader_gets_headers_but_no_body(gate: Gate, routes: list[Route]) -> None:
    subjects: list[tuple[str | None, frozenset[str], int]] = []

    class HeaderReader:
        reads = frozenset({"headers"})

        @hookimpl
        def on_message(self, transaction: Transaction, message: Message) -> None:
            subjects.append((message.get("Subject"), message.withheld, message.body_size))
            transaction.change_header("Subject", f"[tag] {message.get('Subject')}")

    gate.chain.use(HeaderReader())
    for route in routes:
        sent = gate.send(route, headers=["Subject: hello"], body="Body kept.")
        (copy,) = gate.delivered(sent)
        assert header(copy.data, "Subject") == ["[tag] hello"], route.name
        assert copy.data.split(b"\n\n", 1)[1].rstrip() == b"Body kept.", route.name
        assert subjects[-1] == ("hello", frozenset({"body"}), 0), route.name


def test_insert_header_at_the_top(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(OnMessage(lambda tx, msg: tx.insert_header(0, "X-First", "top")))
    for route in routes:
        sent = gate.send(route)
        (copy,) = gate.delivered(sent)
        names = [line.split(b":")[0] for line in copy.data.split(b"\n\n")[0].split(b"\n")]
        # Return-Path, X-Original-To and Delivered-To are added at delivery. As with any
        # milter, index 0 is above Postfix's own Received: (hidden from milters, but counted).
        assert names[3:5] == [b"X-First", b"Received"], (route.name, names)


def test_change_header(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(OnMessage(lambda tx, msg: tx.change_header("Subject", "[SPAM] was: hello")))
    for route in routes:
        sent = gate.send(route, headers=["Subject: hello"])
        (copy,) = gate.delivered(sent)
        assert header(copy.data, "Subject") == ["[SPAM] was: hello"], route.name


def test_delete_header(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(OnMessage(lambda tx, msg: tx.delete_header("X-Secret")))
    for route in routes:
        sent = gate.send(route, headers=["X-Secret: 42", "Subject: kept"])
        (copy,) = gate.delivered(sent)
        assert header(copy.data, "X-Secret") == [], route.name
        assert header(copy.data, "Subject") == ["kept"]


def test_replace_body(gate: Gate, routes: list[Route]) -> None:
    def replace(tx: Transaction, msg: Message) -> None:
        import io

        tx.replace_body(io.BytesIO(b"Replaced body.\r\nSecond line.\r\n"))

    gate.chain.use(OnMessage(replace))
    for route in routes:
        sent = gate.send(route, body="Original body.")
        (copy,) = gate.delivered(sent)
        assert copy.data.split(b"\n\n", 1)[1] == b"Replaced body.\nSecond line.\n", route.name


def test_add_recipient(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(OnMessage(lambda tx, msg: tx.add_recipient("copy@local.test")))
    for route in routes:
        sent = gate.send(route)
        copies = gate.delivered(sent, count=2)
        assert sorted(c.delivered_to for c in copies) == ["bob@local.test", "copy@local.test"]


def test_add_recipient_with_parameters(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(
        OnMessage(lambda tx, msg: tx.add_recipient("param@local.test", ("NOTIFY=NEVER",)))
    )
    for route in routes:
        sent = gate.send(route)
        copies = gate.delivered(sent, count=2)
        assert "param@local.test" in [c.delivered_to for c in copies], route.name


def test_delete_recipient(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(OnMessage(lambda tx, msg: tx.delete_recipient("drop@local.test")))
    for route in routes:
        sent = gate.send(route, to=["drop@local.test", "keep@local.test"])
        copies = gate.delivered(sent, count=1)
        time.sleep(0.2)
        copies = gate.delivered(sent)
        assert [c.delivered_to for c in copies] == ["keep@local.test"], route.name


def test_change_sender(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(
        OnMessage(lambda tx, msg: tx.change_sender("bounces@example.net", ("BODY=8BITMIME",)))
    )
    for route in routes:
        sent = gate.send(route)
        (copy,) = gate.delivered(sent)
        # Postfix offers SMFIF_CHGFROM even with milter_protocol = 2.
        assert header(copy.data, "Return-Path") == ["<bounces@example.net>"], route.name


# -- macros ------------------------------------------------------------------------------------


def test_macros_become_session_and_transaction_fields(gate: Gate, routes: list[Route]) -> None:
    recorder = Recorder()
    gate.chain.use(recorder)
    for route in routes:
        sent = gate.send(route, sender="alice@example.com", extra=["--from", "alice@example.com"])
        assert sent.returncode == 0, sent.output
        seen = recorder.seen[-1]
        assert seen["ip"] == "127.0.0.1", route.name
        assert seen["port"] > 0
        assert seen["helo"] == "client.example"
        assert seen["queue_id"] == sent.queue_id, (route.name, seen)
        assert seen["sender"] == "alice@example.com"
        assert seen["rcpts"] == ["bob@local.test"]
        assert seen["ingress"] == "milter"
        if route.protocol == 6:
            assert seen["daemon"], seen


class RcptQuarantine:
    """Asks for quarantine at RCPT time."""

    @hookimpl
    def on_rcpt(self, recipient: Address) -> Verdict | None:
        """Hold everything for ``suspect@``."""
        return Verdict.quarantine(reason="suspect") if recipient.local_part == "suspect" else None


def test_quarantine_asked_at_rcpt_holds_the_message(gate: Gate, routes: list[Route]) -> None:
    gate.chain.use(RcptQuarantine())
    for route in routes[:2]:
        sent = gate.send(route, to=["suspect@local.test"])
        assert sent.returncode == 0, sent.output
        held = [e for e in gate.postfix.queue() if e.queue_id == sent.queue_id]
        assert held and held[0].held, (route.name, gate.postfix.queue())


def test_relay_control_leaves_postfix_accepted_mail_alone(gate: Gate, routes: list[Route]) -> None:
    """Postfix already applied its relay restrictions; mailgate does not second-guess them."""
    route = routes[0]
    outside = ["--xclient-addr", "192.0.2.55"]  # not in relay_control's default networks
    gate.chain.use(RelayControl())
    sent = gate.send(route, extra=outside)
    assert sent.returncode == 0, sent.output
    assert gate.delivered(sent)

    gate.chain.use(RelayControl(RelayControlSettings(check_milter=True)))
    sent = gate.send(route, extra=outside)
    assert "554 5.7.1 Relay access denied" in sent.output


class SaysSilentButRefuses(OnRcpt):
    """Declares that `on_rcpt` never answers for milter sessions, then refuses ``no*`` anyway."""

    def answers(self, hook: str, ingress: str) -> bool:
        """Never, for milter sessions (which is not true)."""
        return ingress != "milter"


def test_a_refusal_at_a_step_postfix_does_not_wait_for_tempfails_the_message(
    gate: Gate, routes: list[Route], captured_logs: list[dict[str, Any]]
) -> None:
    """Protocol 6: Postfix is told not to wait at RCPT, so the refusal cannot reach it there;
    the whole message is tempfailed at its end and nothing is delivered. Protocol 2 has no
    such flag: the refusal is the RCPT's reply, as usual."""
    gate.chain.use(SaysSilentButRefuses())
    for route in routes:
        sent = gate.send(route, to=["nobody@local.test", "yes@local.test"])
        if route.protocol == 6:
            assert "451 4.3.0 Local error, try again later" in sent.replies(), route.name
            assert "452 4.2.2 Mailbox full, says the plugin" not in sent.replies()
            assert gate.delivered(sent, timeout=0.5) == []
        else:
            assert "452 4.2.2 Mailbox full, says the plugin" in sent.replies(), route.name
            (copy,) = gate.delivered(sent)
            assert copy.delivered_to == "yes@local.test"
    unheard = events(
        captured_logs, "plugin refused at a step the MTA does not wait for: message tempfailed"
    )
    assert len(unheard) == 2 and {line["step"] for line in unheard} == {"RCPT"}
    assert unheard[0]["refusal"].startswith("452 4.2.2")

    sent = gate.send(routes[0], to=["yes@local.test"])  # the next message is not affected
    assert sent.returncode == 0 and len(gate.delivered(sent)) == 1


def test_the_directory_verifies_recipients_behind_postfix(
    gate: Gate, routes: list[Route], tmp_path: Path
) -> None:
    """recipient_verify asking an SQLite directory, on milter sessions: an unknown local
    recipient gets 550 5.1.1 through Postfix, a known one and an alias are delivered."""
    db = tmp_path / "users.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE mailboxes (address TEXT PRIMARY KEY)")
        conn.executemany("INSERT INTO mailboxes VALUES (?)", [("alice@local.test",)])
    directory = DirectorySql(
        DirectorySqlSettings(
            url=f"sqlite:///{db}",
            recipient_query="SELECT address FROM mailboxes WHERE address = :address",
            domains=["local.test"],
        )
    )
    gate.chain.use(directory, RecipientVerify(RecipientVerifySettings(domains=["local.test"])))
    try:
        for route in routes:
            sent = gate.send(route, to=["nobody@local.test", "alice+tag@local.test"])
            assert "550 5.1.1 Recipient address rejected: User unknown" in sent.replies(), (
                route.name,
                sent.output,
            )
            (copy,) = gate.delivered(sent)
            assert copy.delivered_to == "alice+tag@local.test"
    finally:
        assert gate.loop is not None
        gate.loop.run(directory.stop())


# -- PROGRESS through a long end-of-message scan -----------------------------------------------


class SlowScan:
    """Takes three seconds at the end of data (asynchronously: the listener keeps running)."""

    @hookimpl
    async def on_message(self) -> None:
        """Sleep."""
        await asyncio.sleep(3.0)


def test_progress_keeps_postfix_waiting_past_its_content_timeout(gate: Gate) -> None:
    loop = LoopThread()
    keepalive = start_listener(loop, gate.chain, "inet:127.0.0.1:0", progress_interval=0.5)
    silent = start_listener(loop, gate.chain, "inet:127.0.0.1:0", progress_interval=0)
    try:
        short = {"milter_content_timeout": "2s"}
        with_progress, without = (
            Route(name, gate.postfix.add_listener([lst.address], protocol=6, options=short), 6)
            for name, lst in (("progress", keepalive), ("silent", silent))
        )
        gate.chain.use(SlowScan(), timeout=10.0)
        sent = gate.send(with_progress)
        assert sent.returncode == 0, sent.output
        assert len(gate.delivered(sent)) == 1
        # The same scan without PROGRESS outlasts milter_content_timeout: Postfix tempfails.
        sent = gate.send(without)
        assert sent.returncode != 0, sent.output
        assert any(r.startswith("451 4.7.1") for r in sent.replies()), sent.output
        assert gate.delivered(sent, timeout=0.3) == []
    finally:
        gate.chain.use()
        loop.run(keepalive.stop())
        loop.run(silent.stop())
        loop.close()
