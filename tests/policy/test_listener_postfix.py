"""The policy listener with a real Postfix asking it (``check_policy_service``).

Postfix asks at RCPT (``smtpd_recipient_restrictions``, before ``reject_unauth_destination``),
at DATA and at the end of data, over TCP and over a unix socket; every test runs on both.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from mailgate import Address, Session, Transaction, Verdict, hookimpl
from mailgate.pipeline import ErrorPolicy
from mailgate.plugins.add_header import AddHeader, AddHeaderSettings
from mailgate.policy import PolicyListener, PolicyListenerSettings
from tests.milter.gate import Chain, Gate, LoopThread, Route
from tests.peers.postfix import Postfix
from tests.peers.workdir import PeerDirs


def restrictions(address: str, extra: str = "") -> dict[str, str]:
    """smtpd options that ask the policy server at `address` at RCPT, DATA and end of data."""
    policy = f"check_policy_service {{ {address}{extra} }}"
    return {
        "smtpd_recipient_restrictions": f"{policy}, permit_mynetworks, reject_unauth_destination",
        "smtpd_data_restrictions": policy,
        "smtpd_end_of_data_restrictions": policy,
    }


@dataclass
class PolicyGate(Gate):
    """Postfix asking mailgate's policy listeners; `fallback` is a route with a tiny limit."""

    listeners: list[PolicyListener] = field(default_factory=list)
    fallback: Route | None = None
    strict: Route | None = None


def start(loop: LoopThread, chain: Chain, address: str, max_request: int = 65536) -> PolicyListener:
    """A policy listener on `address` serving `chain`, in `loop`."""
    config = PolicyListenerSettings(address=address, socket_mode=0o666, max_request=max_request)
    listener = PolicyListener(config, pipeline=lambda: chain.pipeline)
    loop.run(listener.start())
    return listener


@pytest.fixture(scope="module")
def gate(peer_dirs: PeerDirs) -> Iterator[PolicyGate]:
    """Policy listeners on TCP and a unix socket, each asked by its own smtpd of one Postfix."""
    loop = LoopThread()
    chain = Chain()
    sock_dir = peer_dirs.new("policy")
    tcp = start(loop, chain, "inet:127.0.0.1:0")
    unix = start(loop, chain, f"unix:{sock_dir}/policy.sock")
    small = start(loop, chain, "inet:127.0.0.1:0", max_request=1024)
    postfix = Postfix(peer_dirs.new("postfix"))
    g = PolicyGate(postfix, chain, listeners=[tcp, unix, small])
    for name, listener in (("tcp", tcp), ("unix", unix)):
        port = postfix.add_listener(options=restrictions(listener.address))
        g.routes.append(Route(name, port, 0))
    port = postfix.add_listener(options=restrictions(small.address, ", default_action=DUNNO"))
    g.fallback = Route("fallback", port, 0)
    g.strict = Route("strict", postfix.add_listener(options=restrictions(small.address)), 0)
    postfix.start()
    try:
        yield g
    finally:
        postfix.stop()
        for listener in g.listeners:
            loop.run(listener.stop())
        loop.close()


@pytest.fixture
def routes(gate: PolicyGate) -> Iterator[list[Route]]:
    """The TCP and unix routes; the chain is emptied after the test."""
    yield gate.routes
    gate.chain.use()


def reply_to(sent_output: str, code: str) -> str:
    """The first server reply line starting with `code`."""
    for line in sent_output.splitlines():
        if line.startswith(("<- ", "<**")) and line[4:].startswith(code):
            return line[4:]
    return ""


# -- plugins used by the tests ----------------------------------------------------------------


class OnRcpt:
    """Answers `verdict` for recipients whose local part starts with ``no``."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict

    @hookimpl
    def on_rcpt(self, recipient: Address) -> Verdict | None:
        """The verdict for ``no*`` recipients."""
        return self.verdict if recipient.local_part.startswith("no") else None


class RefuseSender:
    """Refuses senders whose local part is ``spammer`` at MAIL FROM; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def on_mail(self, transaction: Transaction) -> Verdict | None:
        """Refuse ``spammer@...``."""
        self.calls += 1
        if transaction.sender.local_part == "spammer":
            return Verdict.reject(553, "5.7.1", "Sender refused by plugin")
        return None


class Tagger:
    """Adds ``X-Policy-Seen`` at RCPT, for the recipient's domain."""

    @hookimpl
    def on_rcpt(self, transaction: Transaction, recipient: Address) -> None:
        """Add the header once per message."""
        if not transaction.recipients:
            transaction.add_header("X-Policy-Seen", recipient.domain)


class Raises:
    """Fails at every recipient."""

    @hookimpl
    def on_rcpt(self) -> None:
        """Raise."""
        raise RuntimeError("plugin bug")


class Recorder:
    """Keeps what each stage saw, and the sessions that ended."""

    def __init__(self) -> None:
        self.rcpts: list[dict[str, object]] = []
        self.ended: list[str] = []
        self.outcomes: list[tuple[str, str]] = []

    @hookimpl
    def on_rcpt(self, session: Session, transaction: Transaction, recipient: Address) -> None:
        """Record the session and transaction facts."""
        self.rcpts.append(
            {
                "session": session.id,
                "ip": session.client_ip,
                "helo": session.helo,
                "ingress": session.ingress,
                "listener": session.listener,
                "sender": transaction.sender.address,
                "tx": transaction.id,
                "rcpt": recipient.address,
                "earlier": [r.address for r in transaction.recipients],
            }
        )

    @hookimpl
    def on_outcome(self, transaction: Transaction, verdict: Verdict) -> None:
        """Record the outcome."""
        self.outcomes.append((transaction.id, verdict.kind.value))

    @hookimpl
    def on_disconnect(self, session: Session) -> None:
        """Record the end of a session."""
        self.ended.append(session.id)


# -- verdicts -----------------------------------------------------------------------------------


def test_reject_at_rcpt_carries_the_plugins_code_and_text(
    gate: PolicyGate, routes: list[Route]
) -> None:
    gate.chain.use(OnRcpt(Verdict.reject(554, "5.7.9", "Not you, plugin")))
    for route in routes:
        sent = gate.send(route, to=["nobody@local.test"])
        assert sent.returncode != 0, route.name
        line = reply_to(sent.output, "554")
        assert line.startswith("554 5.7.9 <nobody@local.test>"), (route.name, sent.output)
        assert line.endswith("Not you, plugin"), line
        assert gate.delivered(sent, timeout=0.3) == []


def test_reject_refuses_only_that_recipient(gate: PolicyGate, routes: list[Route]) -> None:
    gate.chain.use(OnRcpt(Verdict.reject(550, "5.1.1", "No such user here")))
    for route in routes:
        sent = gate.send(route, to=["nobody@local.test", "yes@local.test"])
        assert sent.returncode == 0, sent.output
        assert reply_to(sent.output, "550").startswith("550 5.1.1 <nobody@local.test>")
        (copy,) = gate.delivered(sent)
        assert copy.delivered_to == "yes@local.test"


def test_tempfail_at_rcpt(gate: PolicyGate, routes: list[Route]) -> None:
    gate.chain.use(OnRcpt(Verdict.tempfail(452, "4.2.2", "Mailbox full, says the plugin")))
    for route in routes:
        sent = gate.send(route, to=["nobody@local.test"])
        line = reply_to(sent.output, "452")
        assert line.startswith("452 4.2.2 <nobody@local.test>"), (route.name, sent.output)
        assert line.endswith("Mailbox full, says the plugin")
        assert gate.delivered(sent, timeout=0.3) == []


def test_a_mail_stage_refusal_is_enforced_at_every_rcpt(
    gate: PolicyGate, routes: list[Route]
) -> None:
    plugin = RefuseSender()
    gate.chain.use(plugin)
    for route in routes:
        plugin.calls = 0
        sent = gate.send(route, sender="spammer@example.com", to=["a@local.test", "b@local.test"])
        replies = [r for r in sent.replies() if r.startswith("553 5.7.1")]
        assert len(replies) == 2, (route.name, sent.output)
        assert all(r.endswith("Sender refused by plugin") for r in replies)
        assert plugin.calls == 1  # on_mail once per transaction, answered at each RCPT
        assert gate.delivered(sent, timeout=0.3) == []


def test_hold_puts_the_message_on_hold(gate: PolicyGate, routes: list[Route]) -> None:
    gate.chain.use(OnRcpt(Verdict.quarantine(reason="looks odd")))
    for route in routes:
        sent = gate.send(route, to=["nosy@local.test"])
        assert sent.returncode == 0, sent.output
        held = [e for e in gate.postfix.queue() if e.queue_id == sent.queue_id]
        assert held and held[0].held, (route.name, gate.postfix.queue())
        gate.postfix.wait_for_log(r"hold: RCPT from .*<nosy@local.test>.*looks odd")


def test_discard_says_yes_and_delivers_nothing(gate: PolicyGate, routes: list[Route]) -> None:
    gate.chain.use(OnRcpt(Verdict.discard(reason="not wanted")))
    for route in routes:
        sent = gate.send(route, to=["nothing@local.test"])
        assert sent.returncode == 0, sent.output
        gate.postfix.wait_for_log(r"discard: RCPT from .*<nothing@local.test>.*not wanted")
        assert gate.delivered(sent, timeout=0.5) == []


def test_disconnect_closes_the_client_session(gate: PolicyGate, routes: list[Route]) -> None:
    gate.chain.use(OnRcpt(Verdict.disconnect("Go away, plugin")))
    for route in routes:
        sent = gate.send(route, to=["nope@local.test"])
        assert reply_to(sent.output, "421").startswith("421 4.7.0"), (route.name, sent.output)
        assert gate.delivered(sent, timeout=0.3) == []


class AtData:
    """Refuses at DATA when the sender is ``late@...``; holds every message at its end."""

    @hookimpl
    def on_data(self, transaction: Transaction) -> Verdict | None:
        """Refuse ``late@...`` at DATA."""
        if transaction.sender.local_part == "late":
            return Verdict.reject(554, "5.7.2", "Not at DATA, plugin")
        return None

    @hookimpl
    def on_message(self) -> Verdict:
        """Hold the message."""
        return Verdict.quarantine(reason="held at end of data")


def test_data_and_end_of_data_decisions(gate: PolicyGate, routes: list[Route]) -> None:
    gate.chain.use(AtData())
    for route in routes:
        sent = gate.send(route, sender="late@example.com")
        line = reply_to(sent.output, "554")
        assert line.startswith("554 5.7.2") and line.endswith("Not at DATA, plugin"), sent.output
        assert gate.delivered(sent, timeout=0.3) == []
        sent = gate.send(route)
        assert sent.returncode == 0, sent.output
        held = [e for e in gate.postfix.queue() if e.queue_id == sent.queue_id]
        assert held and held[0].held, (route.name, gate.postfix.queue())
        gate.postfix.wait_for_log(rf"{sent.queue_id}: hold: END-OF-MESSAGE .*held at end of data")


def test_a_header_added_before_the_data_is_prepended(gate: PolicyGate, routes: list[Route]) -> None:
    gate.chain.use(Tagger())
    for route in routes:
        sent = gate.send(route, to=["one@local.test", "two@local.test"])
        assert sent.returncode == 0, sent.output
        copies = gate.delivered(sent, count=2)
        assert len(copies) == 2
        for copy in copies:
            assert copy.message.get_all("X-Policy-Seen") == ["local.test"], route.name


def test_a_header_added_at_the_end_of_data_is_dropped_not_sent(
    gate: PolicyGate, routes: list[Route]
) -> None:
    # Postfix refuses PREPEND in smtpd_end_of_data_restrictions; mailgate does not send it.
    gate.chain.use(AddHeader(AddHeaderSettings(name="X-Too-Late")))
    for route in routes:
        sent = gate.send(route)
        assert sent.returncode == 0, sent.output
        (copy,) = gate.delivered(sent)
        assert copy.message.get("X-Too-Late") is None
    assert "must be used before smtpd_end_of_data_restrictions" not in gate.postfix.maillog()


@pytest.mark.parametrize(
    ("policy", "refused"), [(ErrorPolicy.TEMPFAIL, True), (ErrorPolicy.ACCEPT, False)]
)
def test_a_failing_plugin_gets_its_on_error_policy(
    gate: PolicyGate, routes: list[Route], policy: ErrorPolicy, refused: bool
) -> None:
    gate.chain.use(Raises(), on_error=policy)
    for route in routes:
        sent = gate.send(route)
        if refused:
            assert reply_to(sent.output, "451").startswith("451 4.3.0"), sent.output
            assert gate.delivered(sent, timeout=0.3) == []
        else:
            assert sent.returncode == 0, sent.output
            assert len(gate.delivered(sent)) == 1


# -- sessions and transactions --------------------------------------------------------------------


def test_one_policy_connection_keeps_sessions_and_messages_apart(
    gate: PolicyGate, routes: list[Route]
) -> None:
    recorder = Recorder()
    gate.chain.use(recorder)
    for route, listener in zip(routes, gate.listeners, strict=False):
        recorder.rcpts.clear()
        recorder.ended.clear()
        connections = listener.connections
        for n in (1, 2, 3):
            # XCLIENT makes each SMTP session come from another address.
            sent = gate.send(
                route,
                sender=f"s{n}@example.com",
                to=[f"a{n}@local.test", f"b{n}@local.test"],
                extra=["--xclient", f"ADDR=192.0.2.{n}", "--helo", f"client{n}.example"],
            )
            assert sent.returncode == 0, sent.output
        with smtplib.SMTP("127.0.0.1", route.port, timeout=20) as client:
            client.ehlo("twice.example")
            for n in (4, 5):  # two messages in one SMTP session
                client.sendmail(
                    f"s{n}@example.com", [f"c{n}@local.test"], b"Subject: x\r\n\r\nx\r\n"
                )
        seen = recorder.rcpts
        assert [r["ip"] for r in seen[:6]] == [f"192.0.2.{n}" for n in (1, 1, 2, 2, 3, 3)]
        assert [r["helo"] for r in seen] == [f"client{n}.example" for n in (1, 1, 2, 2, 3, 3)] + [
            "twice.example"
        ] * 2
        assert [r["sender"] for r in seen] == [
            f"s{n}@example.com" for n in (1, 1, 2, 2, 3, 3, 4, 5)
        ]
        earlier = [[], ["a1@local.test"], [], ["a2@local.test"], [], ["a3@local.test"], [], []]
        assert [r["earlier"] for r in seen] == earlier
        sessions = [r["session"] for r in seen]
        assert sessions[0] == sessions[1] and sessions[6] == sessions[7]
        assert len(set(sessions)) == 4
        assert seen[6]["tx"] != seen[7]["tx"]
        assert {r["ingress"] for r in seen} == {"policy"}
        assert {r["listener"] for r in seen} == {"policy"}
        # Each earlier session ended (on_disconnect) when Postfix asked about the next one.
        assert recorder.ended[:3] == sessions[0:6:2]
        # smtpd keeps its policy connection: four sessions did not need four connections.
        assert listener.connections - connections < 4


# -- protocol failures ---------------------------------------------------------------------------


def test_an_oversized_request_closes_the_connection_and_postfix_applies_default_action(
    gate: PolicyGate,
) -> None:
    assert gate.fallback is not None and gate.strict is not None
    gate.chain.use(OnRcpt(Verdict.reject(550, "5.7.1", "never seen")))
    long = "no" + "x" * 700 + "@local.test"
    sent = gate.send(gate.fallback, to=[long])
    assert sent.returncode == 0, sent.output  # default_action=DUNNO: Postfix goes on
    assert len(gate.delivered(sent)) == 1
    gate.postfix.wait_for_log(r"warning: problem talking to server 127\.0\.0\.1:\d+")
    # Without default_action, Postfix answers 451 4.3.5 as its policy server failed.
    sent = gate.send(gate.strict, to=[long])
    assert reply_to(sent.output, "451").startswith("451 4.3.5"), sent.output
    gate.chain.use()
