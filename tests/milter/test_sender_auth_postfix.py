"""Sender validation on the milter listener, refusing: a real Postfix with SMTP AUTH (Cyrus
SASL, a private sasldb) whose milter is mailgate; mailgate's built-in ``sender_auth`` reads
the login from Postfix's ``{auth_authen}`` macro and refuses a sender the login does not own
with 553 5.7.1, which Postfix gives its client. Delivered mail is checked at the smtp-sink
behind Postfix."""

from __future__ import annotations

import smtplib
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailgate.loader import load_config
from tests.milter.gate import Chain, LoopThread, start_listener
from tests.peers.postfix import SASL_USER_REALM, Postfix
from tests.peers.smtp_sink import SmtpSink
from tests.peers.workdir import PeerDirs

USERS = {"alice": "Tr0ub4dor&3", "bob": "correct horse"}
ALICE = f"alice@{SASL_USER_REALM}"
"""Cyrus names the user with its realm (smtpd_sasl_local_domain), and so does {auth_authen}."""

MAILGATE_TOML = """
[sender_auth]
allowed = { "alice@pf.test" = ["@alice.example", "postmaster@pf.test"] }
"""


@dataclass
class Submission:
    """Postfix with AUTH, one smtpd per milter protocol, all using mailgate's listener."""

    postfix: Postfix
    ports: dict[int, int]
    """smtpd port by milter protocol."""
    cert: str


@pytest.fixture(scope="module")
def sink(peer_dirs: PeerDirs) -> Iterator[SmtpSink]:
    sink = SmtpSink(peer_dirs.new("sink")).start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def submission(
    peer_dirs: PeerDirs, certificate: tuple[str, str], sink: SmtpSink
) -> Iterator[Submission]:
    """The configuration's own chain (``[sender_auth]`` as mailgate.toml sets it, before any
    conf.d plugin) behind a milter listener; Postfix in front, relaying to `sink`."""
    conf = peer_dirs.new("mailgate-conf")
    Path(conf, "mailgate.toml").write_text(MAILGATE_TOML)
    loop, chain = LoopThread(), Chain()
    chain.pipeline = load_config(conf).pipeline()
    listener = start_listener(loop, chain, "inet:127.0.0.1:0")
    postfix = Postfix(peer_dirs.new("postfix"), relayhost=sink.address)
    postfix.enable_tls(*certificate)
    postfix.enable_sasl(USERS)
    ports = {p: postfix.add_listener([listener.address], protocol=p) for p in (6, 2)}
    postfix.start()
    try:
        yield Submission(postfix, ports, certificate[0])
    finally:
        postfix.stop()
        loop.run(listener.stop())
        loop.close()


def submit(
    submission: Submission, protocol: int, sender: str, login: str | None = "alice"
) -> tuple[int, bytes, str]:
    """One message from `sender` after STARTTLS and AUTH PLAIN as `login` (None: no AUTH).
    Returns the MAIL FROM reply (or the DATA reply, once accepted) and the message's id."""
    test_id = uuid.uuid4().hex
    data = f"From: {sender}\r\nSubject: submission\r\nX-Test-Id: {test_id}\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", submission.ports[protocol], timeout=30) as client:
        client.ehlo("client.example")
        context = ssl.create_default_context(cafile=submission.cert)
        context.check_hostname = False
        assert client.starttls(context=context)[0] == 220
        client.ehlo("client.example")
        if login is not None:
            client.login(login, USERS[login])
        code, text = client.mail(sender)
        if code != 250:
            return code, text, test_id
        assert client.rcpt("someone@example.net")[0] == 250
        code, text = client.data(data.encode())
        return code, text, test_id


@pytest.mark.parametrize("protocol", [6, 2])
def test_a_login_sending_as_someone_else_gets_553(
    submission: Submission, sink: SmtpSink, protocol: int
) -> None:
    for sender in (f"bob@{SASL_USER_REALM}", "ceo@example.com", "alice@elsewhere.example"):
        code, text, _ = submit(submission, protocol, sender)
        assert (code, text) == (553, f"5.7.1 Sender address not owned by user {ALICE}".encode())
    submission.postfix.wait_for_log(r"milter-reject: MAIL from .*553 5\.7\.1 Sender address")


@pytest.mark.parametrize("protocol", [6, 2])
def test_the_same_login_sending_as_its_own_addresses_passes(
    submission: Submission, sink: SmtpSink, protocol: int
) -> None:
    own = (
        ALICE,
        f"alice+lists@{SASL_USER_REALM}",
        "anything@alice.example",
        f"postmaster@{SASL_USER_REALM}",
    )
    ids = []
    for sender in own:
        code, text, test_id = submit(submission, protocol, sender)
        assert code == 250, (sender, text)
        ids.append(test_id)
    delivered = sink.wait_for_messages(len(ids), timeout=20)
    for test_id in ids:
        assert any(test_id.encode() in tx.data for tx in delivered), test_id
    sink.clear()


def test_another_login_is_held_to_its_own_addresses(submission: Submission) -> None:
    code, text, _ = submit(submission, 6, ALICE, login="bob")
    assert (code, text) == (
        553,
        f"5.7.1 Sender address not owned by user bob@{SASL_USER_REALM}".encode(),
    )
    code, _, _ = submit(submission, 6, f"bob@{SASL_USER_REALM}", login="bob")
    assert code == 250


def test_without_login_the_sender_is_not_checked(submission: Submission) -> None:
    code, _, _ = submit(submission, 6, f"bob@{SASL_USER_REALM}", login=None)
    assert code == 250
