"""Forward-confirmed reverse DNS and the iprev result (RFC 8601 section 3), against the test
DNS server on loopback."""

from __future__ import annotations

import dns.name
import dns.reversename
import pytest

from mailgate.dns import DnsSettings, async_resolver
from mailgate.iprev import IPREV_NOTE, ClientNames, IprevResult, forward_confirmed_name
from mailgate.session import Session
from tests.peers.dns import DnsServer

FORWARD = """\
$ORIGIN fcrdns.test.
$TTL 300
mail     IN A     192.0.2.1
liar     IN A     192.0.2.99
second   IN A     192.0.2.4
v6       IN AAAA  2001:db8::1
loopback IN A     127.0.0.1
"""

REVERSE_V4 = """\
$ORIGIN 2.0.192.in-addr.arpa.
$TTL 300
1   IN PTR mail.fcrdns.test.
2   IN PTR liar.fcrdns.test.
3   IN PTR nowhere.fcrdns.test.
4   IN PTR liar.fcrdns.test.
4   IN PTR second.fcrdns.test.
5   IN PTR host.not-served.test.
"""

V6_ORIGIN = dns.name.from_text("8.b.d.0.1.0.0.2.ip6.arpa.")


def v6_ptr(address: str, target: str) -> str:
    owner = dns.reversename.from_address(address).relativize(V6_ORIGIN)
    return f"$ORIGIN {V6_ORIGIN}\n$TTL 300\n{owner} IN PTR {target}\n"


@pytest.fixture
def settings(dns_server: DnsServer) -> DnsSettings:
    dns_server.add_zone(FORWARD)
    dns_server.add_zone(REVERSE_V4)
    dns_server.add_zone(v6_ptr("2001:db8::1", "v6.fcrdns.test."))
    dns_server.add_zone("$ORIGIN 0.0.127.in-addr.arpa.\n1 300 IN PTR loopback.fcrdns.test.\n")
    return DnsSettings(
        nameservers=[f"{dns_server.host}:{dns_server.port}"], timeout=2.0, reverse_lookup_skip=[]
    )


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("192.0.2.1", IprevResult("pass", "192.0.2.1", "mail.fcrdns.test")),
        ("::ffff:192.0.2.1", IprevResult("pass", "192.0.2.1", "mail.fcrdns.test")),
        ("192.0.2.4", IprevResult("pass", "192.0.2.4", "second.fcrdns.test")),
        ("2001:db8::1", IprevResult("pass", "2001:db8::1", "v6.fcrdns.test")),
        (
            "192.0.2.2",
            IprevResult(
                "fail", "192.0.2.2", reason="liar.fcrdns.test does not resolve to 192.0.2.2"
            ),
        ),
        (
            "192.0.2.3",
            IprevResult(
                "fail", "192.0.2.3", reason="nowhere.fcrdns.test does not resolve to 192.0.2.3"
            ),
        ),
        ("192.0.2.6", IprevResult("permerror", "192.0.2.6", reason="no PTR record")),
        ("192.0.2.5", IprevResult("temperror", "192.0.2.5", reason="a forward lookup failed")),
    ],
)
async def test_forward_confirmed_name(
    settings: DnsSettings, ip: str, expected: IprevResult
) -> None:
    assert await forward_confirmed_name(async_resolver(settings), ip) == expected


async def test_a_reverse_zone_nobody_serves_is_a_temporary_error(settings: DnsSettings) -> None:
    # The test server refuses zones it does not have, as a broken server would.
    result = await forward_confirmed_name(async_resolver(settings), "198.51.100.1")
    assert result.result == "temperror"
    assert result.reason.startswith("PTR lookup failed")


async def test_the_session_gets_the_confirmed_name_and_the_result(settings: DnsSettings) -> None:
    session = Session(client_ip="192.0.2.1")
    await ClientNames(settings).name(session)
    assert session.client_name == "mail.fcrdns.test"
    assert session.notes[IPREV_NOTE] == IprevResult("pass", "192.0.2.1", "mail.fcrdns.test")


async def test_an_unconfirmed_name_is_not_the_clients(settings: DnsSettings) -> None:
    session = Session(client_ip="192.0.2.2")
    await ClientNames(settings).name(session)
    assert session.client_name == ""
    assert session.notes[IPREV_NOTE].result == "fail"


@pytest.mark.parametrize(
    "session",
    [
        Session(client_ip="192.0.2.1", ingress="milter"),
        Session(client_ip="192.0.2.1", ingress="policy"),
        Session(client_ip="192.0.2.1", client_name="given.example"),
        Session(client_ip=""),
    ],
    ids=["milter", "policy", "named", "no-address"],
)
async def test_sessions_the_mta_named_are_not_looked_up(
    settings: DnsSettings, dns_server: DnsServer, session: Session
) -> None:
    name = session.client_name
    await ClientNames(settings).name(session)
    assert session.client_name == name and IPREV_NOTE not in session.notes
    assert dns_server.queries == []


async def test_loopback_clients_are_skipped_by_default(
    settings: DnsSettings, dns_server: DnsServer
) -> None:
    settings.reverse_lookup_skip = DnsSettings().reverse_lookup_skip
    session = Session(client_ip="127.0.0.1")
    await ClientNames(settings).name(session)
    assert session.client_name == "" and dns_server.queries == []


async def test_a_second_session_from_the_same_client_is_named_from_the_cache(
    settings: DnsSettings, dns_server: DnsServer
) -> None:
    names = ClientNames(settings)
    for _ in range(3):
        await names.name(Session(client_ip="192.0.2.1"))
    assert len(dns_server.queries) == 2  # one PTR, one A
