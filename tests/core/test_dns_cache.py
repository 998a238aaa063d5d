"""The shared DNS answer cache: TTLs, negative answers (RFC 2308) and its bound, counted at a
real DNS server on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dns.resolver
import pytest

from mailgate.config import ConfigError
from mailgate.dns import DnsSettings, async_resolver, keep_cache, shared_cache, sync_resolver
from mailgate.loader import load_config
from tests.peers.dns import DnsServer

SHORT_LIVED = """\
$ORIGIN short.test.
$TTL 1
@       IN SOA  ns1.short.test. hostmaster.short.test. 1 3600 600 86400 1
@       IN NS   ns1.short.test.
ns1     IN A    127.0.0.153
mail    IN A    192.0.2.20
"""
"""A zone whose answers live one second, negative ones included (SOA MINIMUM 1)."""

LONG_LIVED = """\
$ORIGIN long.test.
$TTL 300
@       IN SOA  ns1.long.test. hostmaster.long.test. 1 3600 600 86400 300
@       IN NS   ns1.long.test.
ns1     IN A    127.0.0.153
mail    IN A    192.0.2.30
a       IN A    192.0.2.31
b       IN A    192.0.2.32
c       IN A    192.0.2.33
"""


def settings_for(server: DnsServer, cache_size: int = 10_000) -> DnsSettings:
    return DnsSettings([f"{server.host}:{server.port}"], timeout=2.0, cache_size=cache_size)


def asked(server: DnsServer, name: str, rdtype: str = "A") -> int:
    """How many times the server was asked `name`/`rdtype`."""
    return sum(1 for q in server.queries if q.name == name and q.rdtype == rdtype)


@pytest.fixture
def zones(dns_server: DnsServer) -> DnsServer:
    dns_server.add_zone(SHORT_LIVED)
    dns_server.add_zone(LONG_LIVED)
    return dns_server


async def test_a_second_lookup_is_answered_from_the_cache(zones: DnsServer) -> None:
    resolver = async_resolver(settings_for(zones))
    first = await resolver.resolve("mail.long.test.", "A")
    second = await resolver.resolve("mail.long.test.", "A")
    assert [r.address for r in second] == [r.address for r in first] == ["192.0.2.30"]
    assert asked(zones, "mail.long.test.") == 1


async def test_every_resolver_of_one_settings_shares_the_cache(zones: DnsServer) -> None:
    settings = settings_for(zones)
    await async_resolver(settings).resolve("mail.long.test.", "A")
    # Another plugin's resolver, and pyspf's synchronous one in a thread, find it there.
    await async_resolver(settings).resolve("mail.long.test.", "A")
    await asyncio.to_thread(sync_resolver(settings).resolve, "mail.long.test.", "A")
    assert asked(zones, "mail.long.test.") == 1


async def test_the_cached_answer_still_comes_when_the_server_is_gone(zones: DnsServer) -> None:
    resolver = async_resolver(settings_for(zones))
    await resolver.resolve("mail.long.test.", "A")
    zones.stop()
    answer = await resolver.resolve("mail.long.test.", "A")
    assert [r.address for r in answer] == ["192.0.2.30"]


async def test_an_answer_is_asked_again_when_its_ttl_has_run_out(zones: DnsServer) -> None:
    resolver = async_resolver(settings_for(zones))
    await resolver.resolve("mail.short.test.", "A")
    await resolver.resolve("mail.short.test.", "A")
    assert asked(zones, "mail.short.test.") == 1
    await asyncio.sleep(1.1)
    await resolver.resolve("mail.short.test.", "A")
    assert asked(zones, "mail.short.test.") == 2


async def test_nxdomain_is_cached_for_every_type(zones: DnsServer) -> None:
    resolver = async_resolver(settings_for(zones))
    for rdtype in ("A", "A", "MX", "TXT"):
        with pytest.raises(dns.resolver.NXDOMAIN):
            await resolver.resolve("missing.long.test.", rdtype)
    assert [q.rdtype for q in zones.queries if q.name == "missing.long.test."] == ["A"]


async def test_nodata_is_cached_for_its_type(zones: DnsServer) -> None:
    resolver = async_resolver(settings_for(zones))
    for _ in range(3):
        with pytest.raises(dns.resolver.NoAnswer):
            await resolver.resolve("mail.long.test.", "MX")
    assert asked(zones, "mail.long.test.", "MX") == 1


async def test_negative_answers_last_the_soa_minimum(zones: DnsServer) -> None:
    resolver = async_resolver(settings_for(zones))
    for _ in range(2):
        with pytest.raises(dns.resolver.NXDOMAIN):
            await resolver.resolve("missing.short.test.", "A")
        with pytest.raises(dns.resolver.NoAnswer):
            await resolver.resolve("mail.short.test.", "TXT")
    assert asked(zones, "missing.short.test.") == 1
    assert asked(zones, "mail.short.test.", "TXT") == 1
    await asyncio.sleep(1.1)
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("missing.short.test.", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("mail.short.test.", "TXT")
    assert asked(zones, "missing.short.test.") == 2
    assert asked(zones, "mail.short.test.", "TXT") == 2


async def test_the_cache_is_bounded_and_drops_the_least_recently_used(zones: DnsServer) -> None:
    resolver = async_resolver(settings_for(zones, cache_size=2))
    for name in ("a", "b", "a", "c", "a", "b"):
        await resolver.resolve(f"{name}.long.test.", "A")
    # a stays (used most recently each time); b is pushed out by c, then asked again.
    assert [asked(zones, f"{n}.long.test.") for n in "abc"] == [1, 2, 1]


async def test_cache_size_zero_asks_every_time(zones: DnsServer) -> None:
    settings = settings_for(zones, cache_size=0)
    resolver = async_resolver(settings)
    await resolver.resolve("mail.long.test.", "A")
    await resolver.resolve("mail.long.test.", "A")
    assert asked(zones, "mail.long.test.") == 2
    assert shared_cache(settings) is None


def test_a_reload_keeps_the_cache_only_for_the_same_servers() -> None:
    old = DnsSettings(nameservers=["127.0.0.1:5353"])
    cache = shared_cache(old)
    same = DnsSettings(nameservers=["127.0.0.1:5353"], cache_size=5)
    keep_cache(old, same)
    assert same.cache is cache and cache is not None and cache.max_size == 5
    other = DnsSettings(nameservers=["127.0.0.1:5354"])
    keep_cache(old, other)
    assert other.cache is None


def test_cache_and_reverse_settings_are_read(tmp_path: Path) -> None:
    (tmp_path / "mailgate.toml").write_text(
        '[dns]\ncache_size = 50\nreverse_lookups = false\nreverse_lookup_skip = ["10.0.0.0/8"]\n'
    )
    config = load_config(tmp_path)
    assert config.dns.cache_size == 50
    assert config.dns.reverse_lookups is False
    assert config.dns.reverse_lookup_skip == ["10.0.0.0/8"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[dns]\ncache_size = -1\n", "dns.cache_size"),
        ('[dns]\nreverse_lookups = "yes"\n', "dns.reverse_lookups"),
        ('[dns]\nreverse_lookup_skip = ["localhost"]\n', "dns.reverse_lookup_skip"),
        ("[dns]\ncache = 1\n", "dns.cache"),
    ],
)
def test_bad_cache_settings_name_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "mailgate.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'mailgate.toml'}: {key}:")
