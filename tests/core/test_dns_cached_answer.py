"""`cached_answer`: what the resolver would answer from the shared cache, never asking a server;
and the spf and dkim plugins, which check in the event loop when every answer is cached."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import dns.name
import dns.resolver
import pytest
import spf as spf_library
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mailgate.dns import (
    CacheMiss,
    _name,
    async_resolver,
    cache_entry,
    cached_answer,
    sync_resolver,
)
from mailgate.plugins.spf import Spf, SpfSettings
from tests.core.test_dns_cache import LONG_LIVED, SHORT_LIVED, asked, settings_for
from tests.peers.dns import DnsServer


@pytest.fixture
def zones(dns_server: DnsServer) -> DnsServer:
    dns_server.add_zone(SHORT_LIVED)
    dns_server.add_zone(LONG_LIVED + '@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"\n')
    return dns_server


async def test_a_cached_answer_is_the_resolvers_and_asks_nobody(zones: DnsServer) -> None:
    resolver = sync_resolver(settings_for(zones))
    with pytest.raises(CacheMiss):
        cached_answer(resolver, "mail.long.test.", "A")
    first = await asyncio.to_thread(resolver.resolve, "mail.long.test.", "A")
    again = cached_answer(resolver, "mail.long.test", "A")  # relative: the same name
    assert [r.address for r in again] == [r.address for r in first] == ["192.0.2.30"]
    assert asked(zones, "mail.long.test.") == 1


async def test_cached_negative_answers_raise_as_the_resolver_does(zones: DnsServer) -> None:
    resolver = async_resolver(settings_for(zones))
    with pytest.raises(CacheMiss):
        cached_answer(resolver, "missing.long.test.", "TXT")
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("missing.long.test.", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("mail.long.test.", "MX")
    with pytest.raises(dns.resolver.NXDOMAIN):
        cached_answer(resolver, "missing.long.test.", "TXT")  # NXDOMAIN is for every type
    with pytest.raises(dns.resolver.NoAnswer):
        cached_answer(resolver, "mail.long.test.", "MX")
    with pytest.raises(CacheMiss):
        cached_answer(resolver, "mail.long.test.", "TXT")  # no data for MX says nothing of TXT


async def test_an_expired_answer_is_a_miss(zones: DnsServer) -> None:
    resolver = async_resolver(settings_for(zones))
    await resolver.resolve("mail.short.test.", "A")
    cached_answer(resolver, "mail.short.test.", "A")
    await asyncio.sleep(1.1)
    with pytest.raises(CacheMiss):
        cached_answer(resolver, "mail.short.test.", "A")


def test_without_a_cache_everything_is_a_miss(zones: DnsServer) -> None:
    resolver = sync_resolver(settings_for(zones, cache_size=0))
    resolver.resolve("mail.long.test.", "A")
    with pytest.raises(CacheMiss):
        cached_answer(resolver, "mail.long.test.", "A")


async def test_spf_gives_the_same_outcome_from_the_cache(zones: DnsServer) -> None:
    spf = Spf(SpfSettings(skip_networks=[]), dns=settings_for(zones))
    first = await spf.check("192.0.2.7", "alice@long.test", "helo.test")
    queries = len(zones.queries)
    assert spf._check_cached("192.0.2.7", "alice@long.test", "helo.test") == first
    assert await spf.check("192.0.2.7", "alice@long.test", "helo.test") == first
    assert first.result == "pass"
    assert len(zones.queries) == queries  # answered from the cache, in the event loop


async def test_spf_leaves_a_check_with_an_uncached_answer_to_the_thread(
    zones: DnsServer,
) -> None:
    spf = Spf(SpfSettings(skip_networks=[]), dns=settings_for(zones))
    assert spf._check_cached("192.0.2.7", "bob@long.test", "helo.test") is None
    assert not zones.queries  # it asked nobody
    outcome = await spf.check("198.51.100.1", "bob@long.test", "helo.test")
    assert outcome.result == "fail"
    assert spf._check_cached("198.51.100.1", "bob@long.test", "helo.test") == outcome


async def test_spf_with_cached_answers_needs_no_worker_thread(
    zones: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spf = Spf(SpfSettings(skip_networks=[]), dns=settings_for(zones))
    first = await spf.check("192.0.2.7", "alice@long.test", "helo.test")

    async def no_thread(*args: object, **kwargs: object) -> object:
        raise AssertionError("a worker thread was used")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    assert await spf.check("192.0.2.7", "alice@long.test", "helo.test") == first


class _CountedQuery(spf_library.query):  # type: ignore[misc]
    """pyspf's query, counting the checks that really ran (the reused ones make none)."""

    made = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).made += 1
        super().__init__(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> type[_CountedQuery]:
    monkeypatch.setattr(_CountedQuery, "made", 0)
    monkeypatch.setattr(spf_library, "query", _CountedQuery)
    return _CountedQuery


async def test_spf_reuses_an_outcome_while_its_answers_are_the_same_cache_entries(
    zones: DnsServer, counted: type[_CountedQuery]
) -> None:
    spf = Spf(SpfSettings(skip_networks=[]), dns=settings_for(zones))
    # The first check runs twice: with the cache alone (a miss), then in a thread.
    first = await spf.check("192.0.2.7", "alice@long.test", "helo.test")
    second = await spf.check("192.0.2.7", "alice@long.test", "helo.test")  # from the cache
    assert counted.made == 3
    for _ in range(3):
        assert await spf.check("192.0.2.7", "alice@long.test", "helo.test") == first == second
    assert counted.made == 3  # pyspf did not run again
    other = await spf.check("198.51.100.1", "alice@long.test", "helo.test")
    assert (other.result, counted.made) == ("fail", 4)  # other identities: a check of their own


async def test_spf_checks_again_once_an_answer_it_read_expired(
    dns_server: DnsServer, counted: type[_CountedQuery]
) -> None:
    record = SHORT_LIVED + '@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"\n'
    dns_server.add_zone(record)
    spf = Spf(SpfSettings(skip_networks=[]), dns=settings_for(dns_server))
    await spf.check("192.0.2.7", "alice@short.test", "helo.test")
    cached = await spf.check("192.0.2.7", "alice@short.test", "helo.test")
    assert cached.result == "pass"
    dns_server.add_zone(SHORT_LIVED + '@ IN TXT "v=spf1 -all"\n')
    await asyncio.sleep(1.1)
    assert spf._check_cached("192.0.2.7", "alice@short.test", "helo.test") is None
    fresh = await spf.check("192.0.2.7", "alice@short.test", "helo.test")
    assert fresh.result == "fail"
    assert spf._check_cached("192.0.2.7", "alice@short.test", "helo.test") == fresh


async def test_spf_never_reuses_an_explanation_that_tells_the_time(
    dns_server: DnsServer, counted: type[_CountedQuery]
) -> None:
    dns_server.add_zone(
        LONG_LIVED + '@ IN TXT "v=spf1 -all exp=why.long.test"\nwhy IN TXT "refused at %{T}"\n'
    )
    spf = Spf(SpfSettings(skip_networks=[]), dns=settings_for(dns_server))
    first = await spf.check("192.0.2.7", "alice@long.test", "helo.test")
    assert first.result == "fail" and first.explanation.startswith("refused at ")
    for _ in range(3):
        assert (await spf.check("192.0.2.7", "alice@long.test", "helo.test")).result == "fail"
    assert counted.made == 2 + 3  # each check ran pyspf: %{t} is the time of that check


def test_cache_entry_is_the_entry_cached_answer_read(zones: DnsServer) -> None:
    resolver = sync_resolver(settings_for(zones))
    assert cache_entry(resolver, "mail.long.test.", "A") is None
    resolver.resolve("mail.long.test.", "A")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("missing.long.test.", "A")
    for name, rdtype in (("mail.long.test.", "A"), ("missing.long.test.", "TXT")):
        entries: list[object] = []
        with contextlib.suppress(dns.resolver.NXDOMAIN):
            cached_answer(resolver, name, rdtype, entries=entries)
        assert len(entries) == 1
        assert cache_entry(resolver, name, rdtype) is entries[0]


LABELS = st.lists(st.text(alphabet="aAbB-_9", min_size=1, max_size=6), min_size=1, max_size=4)


@given(one=LABELS, other=LABELS)
def test_a_lookup_name_is_the_same_name_as_dnspython_says(one: list[str], other: list[str]) -> None:
    text, other_text = ".".join(one) + ".", ".".join(other) + "."
    looked_up, plain = _name(text), dns.name.from_text(text)
    other_name = dns.name.from_text(other_text)
    assert hash(looked_up) == hash(plain)
    assert (looked_up == other_name) == (plain == other_name) == (other_name == looked_up)
    assert (looked_up != other_name) == (plain != other_name)
    assert looked_up == plain and looked_up.to_text() == plain.to_text()


def test_a_name_in_other_case_finds_the_cached_answer(zones: DnsServer) -> None:
    resolver = sync_resolver(settings_for(zones))
    resolver.resolve("mail.long.test.", "A")
    assert [r.address for r in cached_answer(resolver, "MAIL.Long.test.", "A")] == ["192.0.2.30"]


async def test_spf_reuses_an_outcome_for_every_local_part_of_the_domain(
    zones: DnsServer, counted: type[_CountedQuery]
) -> None:
    spf = Spf(SpfSettings(skip_networks=[], receiver="gate.test"), dns=settings_for(zones))
    await spf.check("198.51.100.1", "alice@long.test", "helo.test")  # thread: fills the cache
    alice = await spf.check("198.51.100.1", "alice@long.test", "helo.test")  # kept
    made = counted.made
    carol = await spf.check("198.51.100.1", "carol.o'neil@long.test", "helo.test")
    assert counted.made == made  # pyspf did not run for carol
    fresh = await Spf(
        SpfSettings(skip_networks=[], receiver="gate.test"), dns=settings_for(zones)
    ).check("198.51.100.1", "carol.o'neil@long.test", "helo.test")
    assert carol == fresh  # what a check of her own gives, header included
    assert 'envelope-from="carol.o\'neil@long.test";' in carol.header
    assert (carol.result, alice.result) == ("fail", "fail")
    other_domain = await spf.check("198.51.100.1", "carol@short.test", "helo.test")
    assert counted.made > made + 1 and other_domain.domain == "short.test"


@pytest.mark.parametrize(
    "records",
    [
        '@ IN TXT "v=spf1 exists:%{l}.users.long.test -all"\n',
        '@ IN TXT "v=spf1 exists:%{S}.senders.long.test -all"\n',
    ],
)
async def test_spf_checks_each_sender_when_a_record_reads_the_local_part(
    dns_server: DnsServer, records: str
) -> None:
    dns_server.add_zone(
        LONG_LIVED
        + records
        + "alice.users IN A 127.0.0.2\n"
        + "alice%40long.test.senders IN A 127.0.0.2\n"
        + "alice@long.test.senders IN A 127.0.0.2\n"
    )
    spf = Spf(SpfSettings(skip_networks=[]), dns=settings_for(dns_server))
    for _ in range(3):  # the thread, then the cache: alice's outcome is kept
        assert (await spf.check("192.0.2.7", "alice@long.test", "helo.test")).result == "pass"
    assert (await spf.check("192.0.2.7", "bob@long.test", "helo.test")).result == "fail"
    assert (await spf.check("192.0.2.7", "alice@long.test", "helo.test")).result == "pass"


async def test_spf_explains_to_each_sender_when_the_explanation_names_it(
    dns_server: DnsServer,
) -> None:
    dns_server.add_zone(
        LONG_LIVED + '@ IN TXT "v=spf1 -all exp=why.long.test"\nwhy IN TXT "%{l} may not"\n'
    )
    spf = Spf(SpfSettings(skip_networks=[]), dns=settings_for(dns_server))
    for _ in range(3):
        alice = await spf.check("192.0.2.7", "alice@long.test", "helo.test")
    bob = await spf.check("192.0.2.7", "bob@long.test", "helo.test")
    assert (alice.explanation, bob.explanation) == ("alice may not", "bob may not")


@given(local=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1))
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_reused_outcome_is_what_a_check_of_that_sender_gives(
    zones: DnsServer, local: str
) -> None:
    """Any local part: the outcome kept for alice, with its header rewritten for the sender,
    equals a fresh check of that sender (the zone never changes between examples)."""
    sender = f"{local.replace('@', '')}@long.test"
    assume(not sender.startswith("@"))

    def plugin() -> Spf:
        return Spf(SpfSettings(skip_networks=[], receiver="gate.test"), dns=settings_for(zones))

    async def both() -> tuple[object, object]:
        spf = plugin()
        for _ in range(2):
            await spf.check("192.0.2.7", "alice@long.test", "helo.test")
        reused = await spf.check("192.0.2.7", sender, "helo.test")
        return reused, await plugin().check("192.0.2.7", sender, "helo.test")

    reused, fresh = asyncio.run(both())
    assert reused == fresh
