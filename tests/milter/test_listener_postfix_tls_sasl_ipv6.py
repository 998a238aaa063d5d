"""The milter listener's TLS, SASL and IPv6 facts, as a real Postfix hands them over in macros.

One Postfix offers STARTTLS (a self-signed certificate) and AUTH PLAIN/LOGIN (Cyrus SASL, a
private sasldb). It has four smtpd listeners: on 127.0.0.1 with mailgate's milter listener at
``inet:127.0.0.1:PORT``, and on ``[::1]`` with a second milter listener at ``inet:[::1]:PORT``,
each with ``milter_protocol = 6`` and ``2``. A recording plugin keeps what each session held.
"""

from __future__ import annotations

import smtplib
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from mailgate import Message, Session, Transaction, hookimpl
from mailgate.milter.listener import MilterListener
from mailgate.milter.settings import MilterListenerSettings
from tests.milter.gate import Chain, LoopThread
from tests.peers.postfix import SASL_USER_REALM, Postfix
from tests.peers.workdir import PeerDirs

USER, PASSWORD = "alice", "Tr0ub4dor&3"


@dataclass(frozen=True)
class Way:
    """One smtpd of the test Postfix and the milter listener it uses."""

    name: str
    host: str  # where the client connects
    port: int
    protocol: int  # milter_protocol of this smtpd
    listener: str  # the milter listener's name, as plugins see it in session.listener


@dataclass
class Seen:
    """What the plugin saw for one message."""

    listener: str
    client_ip: str
    client_port: int
    tls: bool
    tls_version: str
    tls_cipher: str
    auth_login: str
    queue_id: str


class Recorder:
    """Keeps the session facts of every message, by its X-Test-Id header."""

    def __init__(self) -> None:
        self.seen: dict[str, Seen] = {}

    @hookimpl
    def on_message(self, session: Session, transaction: Transaction, message: Message) -> None:
        """Record the session as it stands at the end of data."""
        self.seen[message.get("X-Test-Id", "") or ""] = Seen(
            session.listener,
            session.client_ip,
            session.client_port,
            session.tls,
            session.tls_version,
            session.tls_cipher,
            session.auth_login,
            transaction.queue_id,
        )


@dataclass
class Bench:
    """The Postfix, its ways in, and the plugin that records what mailgate saw."""

    postfix: Postfix
    ways: list[Way]
    recorder: Recorder
    cert: str


def start_named_listener(loop: LoopThread, chain: Chain, address: str, name: str) -> MilterListener:
    """A milter listener called `name` on `address`, serving `chain`, in `loop`."""
    settings = MilterListenerSettings(address=address, name=name)
    listener = MilterListener(settings, pipeline=lambda: chain.pipeline)
    loop.run(listener.start())
    return listener


@pytest.fixture(scope="module")
def bench(peer_dirs: PeerDirs, certificate: tuple[str, str]) -> Iterator[Bench]:
    """Postfix with STARTTLS and AUTH, reaching mailgate over IPv4 and over IPv6."""
    loop, chain, recorder = LoopThread(), Chain(), Recorder()
    chain.use(recorder)
    v4 = start_named_listener(loop, chain, "inet:127.0.0.1:0", "ipv4")
    v6 = start_named_listener(loop, chain, "inet:[::1]:0", "ipv6")
    assert v6.address.startswith("inet:[::1]:"), v6.address
    ipv6_too = {"inet_protocols": "all", "mynetworks": "127.0.0.0/8 [::1]/128"}
    postfix = Postfix(peer_dirs.new("postfix"), main_cf=ipv6_too)
    postfix.enable_tls(*certificate)
    postfix.enable_sasl({USER: PASSWORD})
    ways = [
        Way(f"{name}-v{protocol}", host, port, protocol, name)
        for name, host, listener in (("ipv4", "127.0.0.1", v4), ("ipv6", "::1", v6))
        for protocol in (6, 2)
        for port in [postfix.add_listener([listener.address], protocol=protocol, host=host)]
    ]
    postfix.start()
    try:
        yield Bench(postfix, ways, recorder, certificate[0])
    finally:
        postfix.stop()
        loop.run(v4.stop())
        loop.run(v6.stop())
        loop.close()


@dataclass
class Client:
    """What the client side knew of its session: its own address and the TLS it agreed."""

    ip: str
    port: int
    tls_version: str | None = None
    cipher: str | None = None


def send(
    bench: Bench,
    way: Way,
    *,
    tls: ssl.TLSVersion | None = None,
    login: bool = False,
    messages: int = 1,
) -> tuple[Client, list[Seen]]:
    """Send `messages` messages in one SMTP session through `way`, with STARTTLS (at most
    version `tls`) and AUTH PLAIN if asked; return the client's view and the plugin's."""
    with smtplib.SMTP(way.host, way.port, timeout=20) as smtp:
        smtp.ehlo("client.example")
        if tls is not None:
            context = ssl.create_default_context(cafile=bench.cert)
            context.check_hostname = False
            context.maximum_version = tls
            assert smtp.starttls(context=context)[0] == 220
            smtp.ehlo("client.example")
        if login:
            smtp.user, smtp.password = USER, PASSWORD
            assert smtp.auth("PLAIN", smtp.auth_plain)[0] == 235
        sock = smtp.sock
        assert sock is not None
        ip, port = sock.getsockname()[:2]
        client = Client(ip, port)
        if isinstance(sock, ssl.SSLSocket):
            client.tls_version, client.cipher = sock.version(), (sock.cipher() or ("",))[0]
        ids = [_send_one(smtp) for _ in range(messages)]
    return client, [bench.recorder.seen[i] for i in ids]


def _send_one(smtp: smtplib.SMTP) -> str:
    test_id = uuid.uuid4().hex
    message = f"X-Test-Id: {test_id}\r\nSubject: macros\r\n\r\nHello.\r\n"
    smtp.sendmail("sender@example.com", ["bob@local.test"], message)
    return test_id


# -- the tests ---------------------------------------------------------------------------------


def test_a_plain_session_has_no_tls_and_no_login(bench: Bench) -> None:
    for way in bench.ways:
        client, [seen] = send(bench, way)
        assert (seen.tls, seen.tls_version, seen.tls_cipher) == (False, "", ""), way.name
        assert seen.auth_login == "", way.name
        assert (seen.client_ip, seen.client_port) == (client.ip, client.port), way.name
        assert seen.listener == way.listener, way.name


@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1_3, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")],
    ids=["TLSv1.3", "TLSv1.2"],
)
def test_starttls_reaches_the_plugin_as_version_and_cipher(
    bench: Bench, version: ssl.TLSVersion, name: str
) -> None:
    for way in bench.ways:
        client, seen = send(bench, way, tls=version, messages=2)
        assert client.tls_version == name
        # Postfix sends the TLS macros once, at EHLO: the second message still has them.
        for each in seen:
            assert each.tls is True, way.name
            assert each.tls_version == client.tls_version, (way.name, each)
            assert each.tls_cipher == client.cipher and each.tls_cipher, (way.name, each)
            assert each.auth_login == "", way.name


def test_an_authenticated_login_reaches_the_plugin(bench: Bench) -> None:
    # With smtpd_sasl_local_domain set, Cyrus names the user with its realm, and so does
    # Postfix in its log and in {auth_authen}.
    login = f"{USER}@{SASL_USER_REALM}"
    for way in bench.ways:
        _, seen = send(bench, way, tls=ssl.TLSVersion.TLSv1_3, login=True, messages=2)
        for each in seen:
            assert each.auth_login == login, (way.name, each)
            assert each.tls is True, way.name
            bench.postfix.wait_for_log(
                rf"{each.queue_id}: client=\S+, sasl_method=PLAIN, sasl_username={login}$"
            )


def test_an_ipv6_client_over_an_ipv6_milter_link(bench: Bench) -> None:
    ipv6 = [way for way in bench.ways if way.host == "::1"]
    assert [way.protocol for way in ipv6] == [6, 2]
    for way in ipv6:
        client, [seen] = send(bench, way, tls=ssl.TLSVersion.TLSv1_3, login=True)
        assert seen.client_ip == "::1", (way.name, seen)
        assert seen.client_port == client.port, way.name
        # Only the listener bound to [::1] has this name: the milter link itself was IPv6.
        assert seen.listener == "ipv6", way.name
        assert seen.tls and seen.auth_login == f"{USER}@{SASL_USER_REALM}", way.name
        bench.postfix.wait_for_log(rf"{seen.queue_id}: client=\S+\[::1\]")
