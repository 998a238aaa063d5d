"""The policy listener request by request, from a plain socket client playing Postfix's part.

The real-Postfix tests are in test_listener_postfix.py; these cover what Postfix does not do on
demand: malformed requests, an exact series of sessions on one connection, the outcome each
transaction reports, the warning about changes a reply cannot carry, metrics and configuration.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from mailgate import Address, Session, Transaction, Verdict, hookimpl
from mailgate.app import App
from mailgate.config import ConfigError, Dynamic
from mailgate.loader import load_config
from mailgate.metrics import Metrics
from mailgate.pipeline import EnabledPlugin, Pipeline, declared_reads
from mailgate.plugins.add_header import AddHeader
from mailgate.plugins.relay_control import RelayControl, RelayControlSettings
from mailgate.policy import PolicyListener, PolicyListenerSettings
from mailgate.policy.protocol import encode_request, parse_reply
from tests.logs import captured_logs, events

__all__ = ["captured_logs"]


def pipeline_of(*plugins: object, observers: tuple[Any, ...] = ()) -> Pipeline:
    """A chain of `plugins` named p0, p1, ..."""
    enabled = [
        EnabledPlugin(f"p{i}", p, timeout=2.0, reads=declared_reads(p))
        for i, p in enumerate(plugins)
    ]
    return Pipeline(enabled, observers)


class Client:
    """Postfix's side of the protocol, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def ask(self, **attrs: str) -> str:
        """Send one request (``request=smtpd_access_policy`` added) and return the action."""
        request = {"request": "smtpd_access_policy", **attrs}
        self.writer.write(encode_request(request))
        reply = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), 5)
        return parse_reply(reply)

    async def closed(self) -> bool:
        """True when the listener has closed the connection."""
        return await asyncio.wait_for(self.reader.read(), 5) == b""


def rcpt(client_port: str, instance: str, recipient: str, **more: str) -> dict[str, str]:
    """The attributes of a RCPT request from 192.0.2.1 to 127.0.0.1:25."""
    return {
        "protocol_state": "RCPT",
        "client_address": "192.0.2.1",
        "client_port": client_port,
        "server_address": "127.0.0.1",
        "server_port": "25",
        "reverse_client_name": "client.example",
        "helo_name": "helo.example",
        "sender": "alice@example.com",
        "recipient": recipient,
        "instance": instance,
        "size": "1234",
        **more,
    }


Chain = Callable[[], Pipeline]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """``await serve(chain, **settings)`` starts a listener and returns a connected `Client`."""
    listeners: list[PolicyListener] = []
    clients: list[Client] = []

    async def start(chain: Chain, **settings: Any) -> Client:
        config = PolicyListenerSettings(address="127.0.0.1:0", **settings)
        listener = PolicyListener(config, pipeline=chain)
        await listener.start()
        listeners.append(listener)
        client = Client(*await asyncio.open_connection("127.0.0.1", listener.port))
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.writer.close()
    for listener in listeners:
        await listener.stop()


class Recorder:
    """Records what the hooks saw; refuses ``no*`` recipients and ``spammer`` senders."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    @hookimpl
    def on_connect(self, session: Session) -> None:
        """Record the session's facts."""
        self.events.append(("connect", session.client_ip, str(session.client_port)))

    @hookimpl
    def on_helo(self, name: str) -> None:
        """Record the name."""
        self.events.append(("helo", name))

    @hookimpl
    def on_mail(self, transaction: Transaction) -> Verdict | None:
        """Record the sender; refuse ``spammer``."""
        sender = transaction.sender
        self.events.append(("mail", sender.address, *sender.params))
        if sender.local_part == "spammer":
            return Verdict.reject(553, "5.7.1", "No spammers")
        return None

    @hookimpl
    def on_rcpt(self, session: Session, recipient: Address) -> Verdict | None:
        """Record the recipient; refuse ``no*``."""
        self.events.append(("rcpt", recipient.address, session.auth_login, session.tls_version))
        if recipient.local_part.startswith("no"):
            return Verdict.reject(550, "5.1.1", "No such user")
        return None

    @hookimpl
    def on_rcpt_refused(self, recipient: Address, verdict: Verdict) -> None:
        """Record the refusal."""
        self.events.append(("refused", recipient.address, str(verdict.code)))

    @hookimpl
    def on_data(self) -> None:
        """Record DATA."""
        self.events.append(("data",))

    @hookimpl
    def on_message(self, transaction: Transaction) -> None:
        """Record the end of the message and what the transaction knows then."""
        self.events.append(("message", transaction.queue_id, *transaction.sender.params))

    @hookimpl
    def on_outcome(self, transaction: Transaction, verdict: Verdict) -> None:
        """Record the outcome."""
        rcpts = ",".join(r.address for r in transaction.recipients)
        self.events.append(("outcome", rcpts, verdict.kind.value))

    @hookimpl
    def on_disconnect(self, session: Session) -> None:
        """Record the end of the session."""
        self.events.append(("disconnect", str(session.client_port)))


# -- requests and answers ------------------------------------------------------------------------


async def test_sessions_and_transactions_on_one_connection(serve: Any) -> None:
    recorder = Recorder()
    pipeline = pipeline_of(recorder)
    client = await serve(lambda: pipeline)
    # Session 1, message 1: two recipients, one refused; then DATA and END-OF-MESSAGE.
    assert await client.ask(**rcpt("1001", "i1", "bob@local.test")) == "DUNNO"
    assert await client.ask(**rcpt("1001", "i1", "nobody@local.test")) == "550 5.1.1 No such user"
    assert await client.ask(**rcpt("1001", "i1", "bob@local.test")) == "DUNNO"  # asked again
    data = rcpt("1001", "i1", "", protocol_state="DATA", queue_id="QID1")
    assert await client.ask(**data) == "DUNNO"
    eom = {**data, "protocol_state": "END-OF-MESSAGE", "size": "2048"}
    assert await client.ask(**eom) == "DUNNO"
    # Session 1, message 2: the sender is refused at MAIL, answered at each RCPT.
    spam = rcpt("1001", "i2", "bob@local.test", sender="spammer@example.com")
    assert await client.ask(**spam) == "553 5.7.1 No spammers"
    assert await client.ask(**{**spam, "recipient": "eve@local.test"}) == "553 5.7.1 No spammers"
    # Session 2 (another client port), authenticated over TLS.
    tls = {"sasl_username": "alice", "encryption_protocol": "TLSv1.3"}
    assert await client.ask(**rcpt("1002", "i3", "carol@local.test", **tls)) == "DUNNO"
    assert await client.ask(**rcpt("1002", "i3", "nora@local.test")) == "550 5.1.1 No such user"
    client.writer.close()
    await asyncio.sleep(0.2)
    assert recorder.events == [
        ("connect", "192.0.2.1", "1001"),
        ("helo", "helo.example"),
        ("mail", "alice@example.com", "SIZE=1234"),
        ("rcpt", "bob@local.test", "", ""),
        ("rcpt", "nobody@local.test", "", ""),
        ("refused", "nobody@local.test", "550"),
        ("data",),
        ("message", "QID1", "SIZE=2048"),
        ("outcome", "bob@local.test", "accept"),
        ("mail", "spammer@example.com", "SIZE=1234"),
        # refused at MAIL: no transaction, so no outcome (as on the other listeners)
        ("disconnect", "1001"),
        ("connect", "192.0.2.1", "1002"),
        ("helo", "helo.example"),
        ("mail", "alice@example.com", "SIZE=1234"),
        ("rcpt", "carol@local.test", "alice", "TLSv1.3"),
        ("rcpt", "nora@local.test", "alice", "TLSv1.3"),
        ("refused", "nora@local.test", "550"),
        ("outcome", "carol@local.test", "accept"),
        ("disconnect", "1002"),
    ]


async def test_a_transaction_whose_every_recipient_was_refused_reports_the_refusal(
    serve: Any,
) -> None:
    recorder = Recorder()
    pipeline = pipeline_of(recorder)
    client = await serve(lambda: pipeline)
    assert await client.ask(**rcpt("1", "i1", "nobody@local.test")) == "550 5.1.1 No such user"
    assert await client.ask(**rcpt("1", "i2", "bob@local.test", protocol_state="HELO")) == "DUNNO"
    assert ("outcome", "", "reject") in recorder.events
    assert ("mail", "alice@example.com", "SIZE=1234") in recorder.events


async def test_vrfy_and_unknown_requests_run_no_transaction(serve: Any) -> None:
    recorder = Recorder()
    pipeline = pipeline_of(recorder)
    client = await serve(lambda: pipeline)
    assert await client.ask(**rcpt("1", "", "", protocol_state="VRFY")) == "DUNNO"
    client.writer.write(b"request=something_else\n\n")
    assert parse_reply(await client.reader.readuntil(b"\n\n")) == "DUNNO"
    assert [e[0] for e in recorder.events] == ["connect", "helo"]


async def test_a_new_session_gets_the_chain_current_at_its_start(serve: Any) -> None:
    chains = [pipeline_of(), pipeline_of(Recorder())]
    client = await serve(lambda: chains[0])
    assert await client.ask(**rcpt("1", "i1", "nobody@local.test")) == "DUNNO"
    chains.reverse()  # a reload
    assert await client.ask(**rcpt("1", "i2", "nobody@local.test")) == "DUNNO"  # same session
    assert await client.ask(**rcpt("2", "i3", "nobody@local.test")) == "550 5.1.1 No such user"


# -- changes --------------------------------------------------------------------------------------


class Changer:
    """Adds two headers and a recipient at RCPT."""

    @hookimpl
    def on_rcpt(self, transaction: Transaction, recipient: Address) -> None:
        """Change things a policy reply can carry (one header) and cannot (the rest)."""
        transaction.add_header("X-First", recipient.address)
        transaction.add_header("X-Second", "2")
        transaction.add_recipient("archive@local.test")


async def test_one_header_is_prepended_and_the_rest_is_logged_once(serve: Any) -> None:
    pipeline = pipeline_of(Changer())
    client = await serve(lambda: pipeline)
    with structlog.testing.capture_logs() as logs:
        assert (
            await client.ask(**rcpt("1", "i1", "a@local.test")) == "PREPEND X-First: a@local.test"
        )
        assert (
            await client.ask(**rcpt("1", "i1", "b@local.test")) == "PREPEND X-First: b@local.test"
        )
    warnings = [e for e in logs if e["event"].startswith("changes a policy reply cannot carry")]
    assert len(warnings) == 1
    assert warnings[0]["changes"] == [
        "p0: AddHeader X-Second: 2",
        "p0: AddRecipient archive@local.test",
    ]


async def test_a_header_at_the_end_of_data_is_not_sent_but_logged(serve: Any) -> None:
    pipeline = pipeline_of(AddHeader())
    client = await serve(lambda: pipeline)
    with structlog.testing.capture_logs() as logs:
        assert await client.ask(**rcpt("1", "i1", "a@local.test")) == "DUNNO"
        eom = rcpt("1", "i1", "a@local.test", protocol_state="END-OF-MESSAGE")
        assert await client.ask(**eom) == "DUNNO"
    (warning,) = [e for e in logs if e["event"].startswith("changes a policy reply")]
    assert warning["changes"] == ["p0: AddHeader X-Mailgate: passed"]


class Holder:
    """Asks for the message to be held (a change, not a verdict)."""

    @hookimpl
    def on_mail(self, transaction: Transaction) -> None:
        """Hold it."""
        transaction.quarantine("held by test")


async def test_a_quarantine_request_is_answered_with_hold(serve: Any) -> None:
    pipeline = pipeline_of(Holder())
    client = await serve(lambda: pipeline)
    assert await client.ask(**rcpt("1", "i1", "a@local.test")) == "HOLD held by test"


# -- malformed requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"request=smtpd_access_policy\nthis is not an attribute\n\n", b"sender=" + b"a" * 5000],
    ids=["malformed", "too-big"],
)
async def test_a_bad_request_closes_the_connection_with_a_log_line(serve: Any, data: bytes) -> None:
    pipeline = pipeline_of()
    client = await serve(lambda: pipeline, max_request=4096)
    with structlog.testing.capture_logs() as logs:
        client.writer.write(data)
        assert await client.closed()
    (event,) = [e for e in logs if e["event"] == "policy protocol error, closing connection"]
    assert event["log_level"] == "warning"


@pytest.mark.parametrize(
    "bad",
    [
        {"size": "²"},
        {"client_port": "²"},
        {"client_port": "1" * 5000},
        {"client_port": "65536"},
        {"size": "١٢"},
        {"recipient_count": "-1"},
    ],
)
async def test_a_number_that_is_not_ascii_digits_is_a_protocol_error(
    serve: Any, bad: dict[str, str]
) -> None:
    pipeline = pipeline_of()
    client = await serve(lambda: pipeline)
    request = {"request": "smtpd_access_policy", **rcpt("4000", "i1", "b@example.net"), **bad}
    with structlog.testing.capture_logs() as logs:
        client.writer.write(encode_request(request))
        assert await client.closed()
    (event,) = [e for e in logs if e["event"] == "policy protocol error, closing connection"]
    assert event["log_level"] == "warning" and next(iter(bad)) in event["reason"]
    assert not [e for e in logs if e.get("exc_info") or e["log_level"] == "error"]


async def test_an_idle_connection_is_closed(serve: Any) -> None:
    pipeline = pipeline_of()
    client = await serve(lambda: pipeline, idle_timeout=0.2)
    assert await client.ask(**rcpt("1", "i1", "a@local.test")) == "DUNNO"
    assert await client.closed()


# -- metrics, relay control, configuration -----------------------------------------------------


async def test_sessions_and_messages_are_counted(serve: Any) -> None:
    metrics = Metrics()
    pipeline = pipeline_of(Recorder(), observers=(metrics,))
    client = await serve(lambda: pipeline)
    await client.ask(**rcpt("1", "i1", "a@local.test"))
    await client.ask(**rcpt("2", "i2", "nobody@local.test"))
    client.writer.close()
    await asyncio.sleep(0.2)
    text = metrics.exposition().decode()
    assert 'mailgate_sessions_total{ingress="policy",listener="policy"} 2.0' in text
    assert 'mailgate_sessions_active{ingress="policy",listener="policy"} 0.0' in text
    accepted = 'mailgate_messages_total{ingress="policy",listener="policy",outcome="accepted"} 1.0'
    assert accepted in text
    rejected = 'mailgate_messages_total{ingress="policy",listener="policy",outcome="rejected"} 1.0'
    assert rejected in text


@pytest.mark.parametrize(("check_policy", "action"), [(False, "DUNNO"), (True, "554 5.7.1")])
async def test_relay_control_leaves_relaying_to_postfix_unless_check_policy(
    serve: Any, check_policy: bool, action: str
) -> None:
    settings = RelayControlSettings(
        domains=Dynamic.fixed(["local.test"]), check_policy=check_policy
    )
    pipeline = pipeline_of(RelayControl(settings))
    client = await serve(lambda: pipeline)
    answer = await client.ask(**rcpt("1", "i1", "victim@elsewhere.test"))
    assert answer.startswith(action)
    assert await client.ask(**rcpt("1", "i1", "bob@local.test")) == "DUNNO"


def test_policy_listener_tables_and_the_policy_option(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text(
        '[[listener]]\ntype = "policy"\naddress = "unix:/run/mailgate/policy.sock"\n'
        'name = "pf-policy"\nmax_request = 8192\nidle_timeout = 60\nsocket_mode = 0o666\n'
    )
    config = load_config(tmp_path)
    (listener,) = config.listeners
    assert listener.type == "policy"
    assert listener.settings == PolicyListenerSettings(
        "unix:/run/mailgate/policy.sock", "pf-policy", 60.0, 0o666, 8192
    )
    config = load_config(tmp_path, policy="127.0.0.1:10041")
    assert [(lc.type, lc.settings.address) for lc in config.listeners] == [
        ("policy", "127.0.0.1:10041")
    ]
    config = load_config(None, policy="inet:127.0.0.1:10041")
    assert [lc.type for lc in config.listeners] == ["policy"]


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('address = "nowhere"', "listener[0].address"),
        ("max_request = 10", "listener[0]"),
        ("idle_timeout = 0", "listener[0]"),
        ("progress_interval = 1", "listener[0].progress_interval"),
    ],
)
def test_bad_policy_listener_settings_name_the_key(tmp_path: Path, table: str, key: str) -> None:
    (tmp_path / "mailgate.toml").write_text(f'[[listener]]\ntype = "policy"\n{table}\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert key in str(info.value)


def test_bad_policy_option_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="--policy"):
        load_config(None, policy="nowhere")


async def test_serve_with_the_policy_option_answers_postfix_requests() -> None:
    app = App(None, policy="inet:127.0.0.1:0", configure_logs=False)
    await app.start()
    try:
        assert [type(x).__name__ for x in app.listeners] == ["PolicyListener"]
        client = Client(*await asyncio.open_connection("127.0.0.1", app.ports[0]))
        assert await client.ask(**rcpt("1", "i1", "bob@local.test")) == "DUNNO"
        client.writer.close()
        assert app.reload()  # the override survives a reload
        assert [lc.type for lc in app.config.listeners] == ["policy"]
    finally:
        await app.stop()


async def test_the_operators_log_has_one_outcome_per_transaction_and_who_refused(
    serve: Callable[..., Any], captured_logs: list[dict[str, Any]]
) -> None:
    control = RelayControl(
        RelayControlSettings(domains=Dynamic.fixed(["local.test"]), check_policy=True)
    )
    chain = Pipeline([EnabledPlugin("relay_control", control)])
    client = await serve(lambda: chain)
    assert (await client.ask(**rcpt("4000", "i1", "x@elsewhere.test"))).startswith("554")
    assert await client.ask(**rcpt("4000", "i2", "ok@local.test")) == "DUNNO"
    client.writer.close()
    await asyncio.sleep(0.2)  # the connection's end closes the second transaction
    outcomes = events(captured_logs, "message outcome")
    assert [(o["verdict"], o["session"] == outcomes[0]["session"]) for o in outcomes] == [
        ("reject", True),
        ("accept", True),
    ]
    assert outcomes[0]["tx"] != outcomes[1]["tx"]
    (refused,) = events(captured_logs, "recipient refused")
    assert (refused["rcpt"], refused["code"], refused["by"]) == (
        "x@elsewhere.test",
        554,
        "relay_control",
    )
    assert len(events(captured_logs, "session start")) == 1


def test_the_client_name_is_postfixs_forward_confirmed_one_only() -> None:
    from mailgate.policy.connection import new_session

    base = {"client_address": "192.0.2.1", "client_port": "4000"}
    confirmed = new_session(
        {**base, "client_name": "mx.example", "reverse_client_name": "mx.example"}, "p"
    )
    assert confirmed.client_name == "mx.example"
    forged = new_session(
        {**base, "client_name": "unknown", "reverse_client_name": "bank.example"}, "p"
    )
    assert forged.client_name == ""
