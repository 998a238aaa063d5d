"""Delivery routes against real peers: MX routing through the test DNS (preferences, a dead
host, an MX naming nothing, the implicit MX, a null MX), failover between fixed next hops,
STARTTLS (opportunistic, required, verified) with Postfix, the limit of connections per
destination at a slow smtp-sink, and routes chosen by the recipient's domain.

The store is SQLite here: routing does not depend on it (tests/queue runs the rest on both).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from mailgate.app import App
from mailgate.config import ConfigError
from mailgate.dns import DnsSettings, async_resolver
from mailgate.loader import load_config
from mailgate.queue.mx import NoRoute, mail_hosts
from mailgate.queue.routes import Router, RouteSettings, default_route
from mailgate.relay.settings import RelaySettings
from mailgate.session import Address
from tests.peers.dns import DnsServer
from tests.peers.ports import free_port
from tests.peers.postfix import Postfix, PostfixFactory
from tests.peers.smtp_sink import SinkOptions, SmtpSink
from tests.peers.workdir import PeerDirs
from tests.queue.helpers import message, send, store_rows, toml_value

ZONE = """\
$ORIGIN routes.test.
$TTL 300
@         IN SOA ns.routes.test. hostmaster.routes.test. 1 3600 600 86400 300
multi     IN MX  10 dead.routes.test.
multi     IN MX  20 nowhere.routes.test.
multi     IN MX  30 primary.routes.test.
multi     IN MX  40 backup.routes.test.
busy      IN MX  10 greets-421.routes.test.
busy      IN MX  20 backup.routes.test.
equal     IN MX  10 one.routes.test.
equal     IN MX  10 two.routes.test.
equal     IN MX  20 backup.routes.test.
plain     IN A   127.0.0.2
nomail    IN MX  0 .
dangling  IN MX  10 nowhere.routes.test.
noaddress IN TXT "a name with neither MX nor address"
secure    IN MX  10 mx.mailgate.test.
dead      IN A   127.0.0.4
primary   IN A   127.0.0.2
backup    IN A   127.0.0.3
greets-421 IN A  127.0.0.5
one       IN A   127.0.0.6
two       IN A   127.0.0.7
"""
"""MX hosts on 127.0.0.x, all on one port (the route's ``mx_port``): primary .2 and backup .3
are smtp-sinks, dead .4 has nothing listening, greets-421 .5 greets with 421."""

MAILGATE_ZONE = """\
$ORIGIN mailgate.test.
$TTL 300
mx IN A 127.0.0.1
"""
"""The name on the test certificate (tests.peers.certificate), for verified TLS."""

Start = Callable[..., Awaitable[App]]


def routes_toml(
    store_url: str,
    next_hop: str,
    routes: list[Mapping[str, object]],
    *,
    dns_port: int | None = None,
    queue: Mapping[str, object] | None = None,
) -> str:
    """``mailgate.toml`` for a node whose listener queues and whose worker follows `routes`."""
    queue_table = {"next_hop": next_hop, "min_backoff": 60.0, "max_backoff": 60.0, **(queue or {})}
    lines = ["[store]", f'url = "{store_url}"', "[queue]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in queue_table.items()]
    for route in routes:
        lines += ["[[queue.route]]", *(f"{k} = {toml_value(v)}" for k, v in route.items())]
    lines += ["[relay]", "connect_timeout = 2.0", "command_timeout = 10.0"]
    if dns_port is not None:
        lines += ["[dns]", f'nameservers = ["127.0.0.1:{dns_port}"]', "timeout = 2.0"]
    lines += ["[[listener]]", 'address = "127.0.0.1:0"', 'egress = "queue"']
    return "\n".join(lines) + "\n"


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """``await start(routes, next_hop=..., dns_port=..., queue={...})``: a started node on a
    fresh SQLite store (``app.store_url``); stopped after the test."""
    apps: list[App] = []

    async def factory(
        routes: list[Mapping[str, object]], next_hop: str = "", **options: Any
    ) -> App:
        directory = tmp_path / f"conf{len(apps)}"
        directory.mkdir()
        url = f"sqlite:///{tmp_path}/store{len(apps)}/mailgate.db"
        hop = next_hop or f"127.0.0.1:{free_port()}"  # the default route: nothing there
        (directory / "mailgate.toml").write_text(routes_toml(url, hop, routes, **options))
        app = App(directory, configure_logs=False)
        await app.start()
        app.store_url = url  # type: ignore[attr-defined]
        apps.append(app)
        return app

    yield factory
    for app in apps:
        await app.stop()


@pytest.fixture
def dns(dns_server: DnsServer) -> DnsServer:
    """The test DNS with the routes.test and mailgate.test zones."""
    dns_server.add_zone(ZONE)
    dns_server.add_zone(MAILGATE_ZONE)
    return dns_server


def common_port(hosts: list[str]) -> int:
    """A port free on every one of `hosts` (loopback addresses) now."""
    while True:
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port


@pytest.fixture
def mx_sinks(peer_dirs: PeerDirs) -> Iterator[Callable[..., SmtpSink]]:
    """``mx_sinks(host, port, **options)``: a started smtp-sink on `host`:`port`."""
    sinks: list[SmtpSink] = []

    def factory(host: str, port: int, **options: Any) -> SmtpSink:
        sink = SmtpSink(peer_dirs.new("sink"), SinkOptions(**options), host=host)
        sink.port = port
        sinks.append(sink.start())
        return sink

    yield factory
    for sink in sinks:
        sink.stop()


async def wait_for(probe: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """Await `probe()` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while not (found := await probe()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)
    return found


async def settled(url: str, count: int) -> dict[str, dict[str, object]]:
    """The recipient rows by address once `count` of them have been attempted."""

    async def probe() -> dict[str, dict[str, object]]:
        _, rows = await store_rows(url)
        attempted = [r for r in rows if r["state"] != "pending"]
        return {str(r["address"]): r for r in rows} if len(attempted) >= count else {}

    found: dict[str, dict[str, object]] = await wait_for(probe)
    return found


async def store_empty(url: str) -> bool:
    """True once every message left the store (delivered to every recipient)."""
    msgs, rcpts = await store_rows(url)
    return not msgs and not rcpts


# -- MX routing ----------------------------------------------------------------------------


async def test_mx_route_skips_a_dead_host_and_an_mx_naming_nothing(
    start: Start, dns: DnsServer, mx_sinks: Callable[..., SmtpSink]
) -> None:
    port = common_port(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    primary, backup = mx_sinks("127.0.0.2", port), mx_sinks("127.0.0.3", port)
    app = await start([{"mx": True, "mx_port": port}], dns_port=dns.port)
    data = message("mx1@routes.test")
    code, _ = await asyncio.to_thread(send, app.ports[0], ["a@multi.routes.test"], data)
    assert code == 250
    # MX 10 (nothing listening) and MX 20 (no such host) are skipped; MX 30 takes it.
    (got,) = await asyncio.to_thread(primary.wait_for_messages, 1, 20.0)
    assert got.rcpts == ("a@multi.routes.test",)
    assert await wait_for(lambda: store_empty(app.store_url))  # type: ignore[attr-defined]
    assert backup.messages() == []
    asked = {(q.name, q.rdtype) for q in dns.queries}
    assert ("multi.routes.test.", "MX") in asked and ("nowhere.routes.test.", "A") in asked


async def test_per_domain_attempts_record_the_host_that_answered(
    start: Start, dns: DnsServer, mx_sinks: Callable[..., SmtpSink]
) -> None:
    port = common_port(["127.0.0.2", "127.0.0.3", "127.0.0.5"])
    primary = mx_sinks("127.0.0.2", port)
    mx_sinks("127.0.0.5", port, reply_421=["CONNECT"])
    mx_sinks("127.0.0.3", port, soft_reject=["RCPT"], soft_reply="450 4.2.0 Try later")
    app = await start([{"mx": True, "mx_port": port}], dns_port=dns.port)
    # plain.routes.test has no MX: its A record is the implicit MX (the primary sink).
    # busy.routes.test: MX 10 greets with 421, so MX 20 (backup) is tried; it defers RCPT.
    rcpts = ["a@plain.routes.test", "b@busy.routes.test"]
    code, _ = await asyncio.to_thread(send, app.ports[0], rcpts, message("mx2@routes.test"))
    assert code == 250
    (got,) = await asyncio.to_thread(primary.wait_for_messages, 1, 20.0)
    assert got.rcpts == ("a@plain.routes.test",)
    rows = await settled(app.store_url, 2)  # type: ignore[attr-defined]
    delivered, deferred = rows["a@plain.routes.test"], rows["b@busy.routes.test"]
    assert delivered["state"] == "delivered"
    assert delivered["remote_mta"] == f"plain.routes.test[127.0.0.2]:{port}"
    assert deferred["state"] == "deferred"
    assert str(deferred["last_reply"]).startswith("450 4.2.0")
    assert deferred["remote_mta"] == f"backup.routes.test[127.0.0.3]:{port}"


async def test_null_mx_bounces_and_an_unreachable_domain_defers(
    start: Start, dns: DnsServer
) -> None:
    app = await start([{"mx": True, "mx_port": free_port()}], dns_port=dns.port)
    rcpts = ["a@nomail.routes.test", "b@dangling.routes.test", "c@missing.routes.test"]
    code, _ = await asyncio.to_thread(send, app.ports[0], rcpts, message("mx3@routes.test"))
    assert code == 250
    rows = await settled(app.store_url, 3)  # type: ignore[attr-defined]
    null_mx = rows["a@nomail.routes.test"]
    assert null_mx["state"] == "bounced"
    assert str(null_mx["last_reply"]).startswith("556 5.1.10 ")
    dangling = rows["b@dangling.routes.test"]  # its only MX names a host that does not exist
    assert dangling["state"] == "deferred"
    assert str(dangling["last_reply"]).startswith("451 4.4.4 No address for any MX host")
    missing = rows["c@missing.routes.test"]  # NXDOMAIN
    assert missing["state"] == "bounced" and str(missing["last_reply"]).startswith("550 5.1.2")


async def test_mx_order_is_by_preference_random_among_equals(dns: DnsServer) -> None:
    resolver = async_resolver(DnsSettings(nameservers=[f"127.0.0.1:{dns.port}"], timeout=2.0))
    firsts = set()
    for _ in range(40):
        hosts = await mail_hosts(resolver, "equal.routes.test")
        assert [h.preference for h in hosts] == [10, 10, 20]
        assert hosts[-1].name == "backup.routes.test" and hosts[-1].address == "127.0.0.3"
        firsts.add(hosts[0].name)
    assert firsts == {"one.routes.test", "two.routes.test"}
    (implicit,) = await mail_hosts(resolver, "plain.routes.test")
    assert (implicit.name, implicit.address) == ("plain.routes.test", "127.0.0.2")
    (literal,) = await mail_hosts(resolver, "[127.0.0.9]")
    assert literal.address == "127.0.0.9"
    with pytest.raises(NoRoute) as no_address:
        await mail_hosts(resolver, "noaddress.routes.test")  # neither MX nor A/AAAA
    assert no_address.value.reply.code == 550
    with pytest.raises(NoRoute) as refused:
        await mail_hosts(resolver, "elsewhere.test")  # the server refuses: try again later
    assert (refused.value.reply.code, refused.value.reply.status) == (451, "4.4.3")


# -- fixed next hops -----------------------------------------------------------------------


async def test_failover_to_the_second_next_hop_when_the_first_is_closed(
    start: Start, smtp_sink: SmtpSink
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    route = {"when": 'rcpt.domain == "example.org"', "next_hop": [closed, smtp_sink_hop(smtp_sink)]}
    app = await start([route], queue={"min_backoff": 0.5})
    code, _ = await asyncio.to_thread(send, app.ports[0], ["b@example.org"], message("f1@q.test"))
    assert code == 250
    (got,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1, 20.0)
    assert got.header("Message-ID") == "<f1@q.test>"
    assert await wait_for(lambda: store_empty(app.store_url))  # type: ignore[attr-defined]


def smtp_sink_hop(sink: SmtpSink) -> str:
    """The sink as a next hop."""
    return f"{sink.host}:{sink.port}"


async def test_routes_by_recipient_domain_each_to_its_own_sink(
    start: Start, smtp_sink_factory: Callable[..., SmtpSink]
) -> None:
    sink_a, sink_b = smtp_sink_factory(), smtp_sink_factory()
    routes = [
        {"name": "to-a", "when": 'rcpt.domain == "a.test"', "next_hop": [smtp_sink_hop(sink_a)]},
        {
            "name": "to-b",
            "when": 'rcpt.domain == "b.test" || sender.domain == "vip.test"',
            "next_hop": [smtp_sink_hop(sink_b)],
        },
    ]
    app = await start(routes)  # the default route: a closed port
    rcpts = ["x@a.test", "y@b.test", "z@c.test", "w@a.test"]
    code, _ = await asyncio.to_thread(send, app.ports[0], rcpts, message("r1@q.test"))
    assert code == 250
    (got_a,) = await asyncio.to_thread(sink_a.wait_for_messages, 1, 20.0)
    (got_b,) = await asyncio.to_thread(sink_b.wait_for_messages, 1, 20.0)
    assert got_a.rcpts == ("x@a.test", "w@a.test")  # one transaction for the destination
    assert got_b.rcpts == ("y@b.test",)
    rows = await settled(app.store_url, 4)  # type: ignore[attr-defined]
    assert rows["z@c.test"]["state"] == "deferred"  # no route matched: the default, closed
    assert str(rows["z@c.test"]["last_reply"]).startswith("451 4.4.1 ")
    # The sender chooses too: from vip.test, c.test goes the way of b.test.
    code, _ = await asyncio.to_thread(
        send, app.ports[0], ["v@c.test"], message("r2@q.test"), "boss@vip.test"
    )
    assert code == 250
    second = await asyncio.to_thread(sink_b.wait_for_messages, 2, 20.0)
    assert second[-1].rcpts == ("v@c.test",)
    assert sink_a.messages() == [got_a]


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture
def tls_postfix(
    postfix_factory: PostfixFactory, smtp_sink: SmtpSink, certificate: tuple[str, str]
) -> Postfix:
    """A Postfix offering STARTTLS with the test certificate (``mx.mailgate.test``), relaying
    to `smtp_sink`."""
    logged = {"smtpd_tls_loglevel": "1", "smtpd_tls_received_header": "yes"}
    instance = postfix_factory(relay=smtp_sink, main_cf=logged, start=False)
    instance.enable_tls(*certificate)
    return instance.start()


async def test_opportunistic_starttls_when_postfix_offers_it(
    start: Start, tls_postfix: Postfix, smtp_sink: SmtpSink
) -> None:
    route = {"next_hop": [f"{tls_postfix.host}:{tls_postfix.port}"]}  # tls: opportunistic
    app = await start([route])
    code, _ = await asyncio.to_thread(send, app.ports[0], ["b@example.org"], message("t1@q.test"))
    assert code == 250
    (got,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1, 30.0)
    assert got.header("Message-ID") == "<t1@q.test>"
    assert "using TLS" in (got.header("Received") or "")  # Postfix's, over mailgate's
    tls_postfix.wait_for_log(r"Anonymous TLS connection established from localhost\[127\.0\.0\.1\]")


async def test_opportunistic_tls_that_fails_goes_again_in_clear(
    start: Start, tls_postfix: Postfix, smtp_sink: SmtpSink
) -> None:
    # Verifying against the system's CAs, which do not know the test certificate: the
    # handshake fails, and opportunistic TLS then sends in clear (as Postfix's "may" does).
    hop = f"{tls_postfix.host}:{tls_postfix.port}"
    app = await start([{"next_hop": [hop], "tls": "opportunistic", "tls_verify": True}])
    code, _ = await asyncio.to_thread(send, app.ports[0], ["b@example.org"], message("t5@q.test"))
    assert code == 250
    (got,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1, 30.0)
    assert got.header("Message-ID") == "<t5@q.test>"
    assert "using TLS" not in (got.header("Received") or "")
    assert await wait_for(lambda: store_empty(app.store_url))  # type: ignore[attr-defined]


async def test_required_tls_verified_against_the_test_ca_by_mx_name(
    start: Start,
    dns: DnsServer,
    tls_postfix: Postfix,
    smtp_sink: SmtpSink,
    certificate: tuple[str, str],
) -> None:
    # secure.routes.test MX -> mx.mailgate.test (127.0.0.1), the certificate's name.
    verified = {
        "when": 'rcpt.local == "verified"',
        "mx": True,
        "mx_port": tls_postfix.port,
        "tls": "required",
        "tls_verify": True,
        "tls_ca_file": certificate[0],
    }
    # The same without the test CA (the system's CAs): the certificate is not trusted.
    untrusted = {"mx": True, "mx_port": tls_postfix.port, "tls": "required", "tls_verify": True}
    app = await start([verified, untrusted], dns_port=dns.port)
    rcpts = ["verified@secure.routes.test"]
    code, _ = await asyncio.to_thread(send, app.ports[0], rcpts, message("t2@q.test"))
    assert code == 250
    (got,) = await asyncio.to_thread(smtp_sink.wait_for_messages, 1, 30.0)
    assert got.rcpts == ("verified@secure.routes.test",)
    code, _ = await asyncio.to_thread(
        send, app.ports[0], ["untrusted@secure.routes.test"], message("t3@q.test")
    )
    assert code == 250
    rows = await settled(app.store_url, 1)  # type: ignore[attr-defined]
    row = rows["untrusted@secure.routes.test"]
    assert row["state"] == "deferred" and row["remote_mta"] is None
    assert "STARTTLS failed" in str(row["last_reply"])
    assert "certificate verify failed" in str(row["last_reply"])
    await asyncio.sleep(1.0)
    assert len(smtp_sink.messages()) == 1  # never sent in clear
    assert "t3@q.test" not in tls_postfix.maillog()


async def test_required_tls_not_offered_defers_and_sends_nothing(
    start: Start, smtp_sink: SmtpSink
) -> None:
    route = {"next_hop": [smtp_sink_hop(smtp_sink)], "tls": "required"}  # smtp-sink: no TLS
    app = await start([route])
    code, _ = await asyncio.to_thread(send, app.ports[0], ["b@example.org"], message("t4@q.test"))
    assert code == 250
    rows = await settled(app.store_url, 1)  # type: ignore[attr-defined]
    row = rows["b@example.org"]
    assert row["state"] == "deferred"
    assert str(row["last_reply"]).startswith("451 4.4.1 ")
    assert f"({smtp_sink_hop(smtp_sink)}: STARTTLS required, not offered)" in str(row["last_reply"])
    assert list(smtp_sink.dump_dir.iterdir()) == []  # not even a MAIL FROM


# -- concurrency per destination -----------------------------------------------------------


def established(port: int) -> int:
    """TCP connections established to the local `port` now (the server's side, from
    /proc/net/tcp: the sink is in another process, so this counts what it really has)."""
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


@contextlib.contextmanager
def connection_counter(port: int) -> Iterator[list[int]]:
    """While inside, samples `established` every 10 ms; yields the samples taken."""
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(established(port))
            time.sleep(0.01)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


async def test_destination_concurrency_is_honoured_and_connections_reused(
    start: Start, smtp_sink_factory: Callable[..., SmtpSink]
) -> None:
    slow = smtp_sink_factory(data_delay=1)
    route = {"name": "slow", "next_hop": [smtp_sink_hop(slow)], "destination_concurrency": 2}
    app = await start([route], queue={"concurrency": 10})
    with connection_counter(slow.port) as samples:
        for i in range(8):
            code, _ = await asyncio.to_thread(
                send, app.ports[0], ["b@example.org"], message(f"c{i}@q.test")
            )
            assert code == 250
        await asyncio.to_thread(slow.wait_for_messages, 8, 30.0)
    assert max(samples) == 2  # never more than the limit, and the limit was used
    assert app.queue is not None
    (destination,) = list(app.queue.worker.destinations)
    assert destination.peak == 2
    assert destination.pool.opened == 2  # 8 messages over 2 connections


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "key", "expected"),
    [
        ({"next_hop": ["127.0.0.1:25"], "mx": True}, "queue.route[0]", "either next_hop"),
        ({}, "queue.route[0]", "either next_hop"),
        ({"when": "rcpt.domain ==", "mx": True}, "queue.route[0].when", "valid CEL"),
        ({"when": 'client.name == "x"', "mx": "yes"}, "queue.route[0].mx", "true or false"),
        ({"mx": True, "tls": "maybe"}, "queue.route[0].tls", '"opportunistic"'),
        ({"next_hop": ["nohost"]}, "queue.route[0].next_hop[0]", '"host:port"'),
        ({"next_hop": ["h:0"]}, "queue.route[0].next_hop", "port from 1"),
        ({"mx": True, "tls_ca_file": "/no/such/ca.pem"}, "queue.route[0].tls_ca_file", "readable"),
        ({"mx": True, "tls": "none", "tls_verify": True}, "queue.route[0].tls_verify", "needs"),
        ({"mx": True, "mx_port": 0}, "queue.route[0].mx_port", "port"),
        ({"mx": True, "colour": "red"}, "queue.route[0].colour", "one of"),
    ],
)
def test_bad_route_stops_start_naming_file_and_key(
    tmp_path: Path, route: dict[str, object], key: str, expected: str
) -> None:
    text = routes_toml("sqlite:////tmp/unused.db", "127.0.0.1:25", [route])
    (tmp_path / "mailgate.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.file == str(tmp_path / "mailgate.toml")
    assert caught.value.key == key
    assert expected in caught.value.expected, caught.value


def test_routes_load_and_the_first_match_wins(tmp_path: Path) -> None:
    routes: list[Mapping[str, object]] = [
        {"when": 'rcpt.domain == "example.org"', "next_hop": ["10.0.0.1:25", "10.0.0.2:25"]},
        {"name": "internet", "mx": True, "tls": "required", "destination_concurrency": 5},
        {"when": "true", "next_hop": ["10.0.0.3:25"]},
    ]
    text = routes_toml("sqlite:////tmp/unused.db", "127.0.0.1:2526", routes)
    (tmp_path / "mailgate.toml").write_text(text)
    config = load_config(tmp_path)
    assert config.queue is not None
    names = [r.name for r in config.queue.route]
    assert names == ["route[0]", "internet", "route[2]"]
    relay = RelaySettings(starttls="never")
    router = Router(config.queue.route, default_route("", relay), relay, 20)
    sender = Address("a@example.net")
    assert router.route(sender, Address("b@example.org")).name == "route[0]"
    internet = router.route(sender, Address("b@Example.COM"))
    assert internet.name == "internet" and internet.concurrency == 5
    assert internet.destination(Address("b@Example.COM")) == "example.com"
    assert internet.connection.starttls == "require" and internet.connection.xforward is False
    assert router.default.settings.next_hop == ["127.0.0.1:25"]  # [relay] address
    assert router.default.tls is None  # [relay] starttls = "never"


def test_route_settings_reject_both_kinds() -> None:
    with pytest.raises(ValueError, match="either next_hop"):
        RouteSettings(next_hop=["127.0.0.1:25"], mx=True)
