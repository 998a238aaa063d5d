"""The ``[dns]`` table of mailgate.toml and its resolvers, against a real DNS server."""

from __future__ import annotations

from pathlib import Path

import dns.resolver
import pytest

from mailgate.config import ConfigError
from mailgate.dns import DnsSettings, async_resolver, parse_nameserver, sync_resolver
from mailgate.loader import load_config
from tests.peers.dns import EXAMPLE_ZONE, DnsServer


def _core(tmp_path: Path, text: str) -> Path:
    (tmp_path / "mailgate.toml").write_text(text)
    return tmp_path


def test_defaults_use_the_system_resolver_and_five_seconds() -> None:
    config = load_config(None)
    assert config.dns == DnsSettings(nameservers=[], timeout=5.0)


def test_dns_table_is_read(tmp_path: Path) -> None:
    text = '[dns]\nnameservers = ["192.0.2.53", "127.0.0.1:5353", "[::1]:53"]\ntimeout = 2\n'
    config = load_config(_core(tmp_path, text))
    assert config.dns.nameservers == ["192.0.2.53", "127.0.0.1:5353", "[::1]:53"]
    assert config.dns.timeout == 2.0


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[dns]\nnameservers = ["dns.example.com"]\n', "dns.nameservers"),
        ('[dns]\nnameservers = ["127.0.0.1:99999"]\n', "dns.nameservers"),
        ('[dns]\nnameservers = ["[::1"]\n', "dns.nameservers"),
        ("[dns]\ntimeout = 0\n", "dns.timeout"),
        ('[dns]\ntimeout = "5"\n', "dns.timeout"),
        ("[dns]\nservers = []\n", "dns.servers"),
    ],
)
def test_bad_dns_settings_name_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_core(tmp_path, text))
    message = str(info.value)
    assert message.startswith(str(tmp_path / "mailgate.toml") + ": " + key + ":")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.53", ("192.0.2.53", 53)),
        ("192.0.2.53:5353", ("192.0.2.53", 5353)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        ("[2001:db8::53]", ("2001:db8::53", 53)),
        ("[2001:db8::53]:5353", ("2001:db8::53", 5353)),
    ],
)
def test_parse_nameserver(value: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(value) == expected


def test_sync_resolver_asks_the_configured_server(dns_server: DnsServer) -> None:
    dns_server.add_zone(EXAMPLE_ZONE)
    settings = DnsSettings(nameservers=[f"{dns_server.host}:{dns_server.port}"], timeout=2.0)
    resolver = sync_resolver(settings)
    answer = resolver.resolve("mail.example.com", "A")
    assert [r.address for r in answer] == ["192.0.2.10"]
    assert resolver.lifetime == 2.0
    assert dns_server.queries[-1].name == "mail.example.com."


async def test_async_resolver_asks_the_configured_server(dns_server: DnsServer) -> None:
    dns_server.add_zone(EXAMPLE_ZONE)
    settings = DnsSettings(nameservers=[f"{dns_server.host}:{dns_server.port}"])
    answer = await async_resolver(settings).resolve("example.com", "MX")
    assert [r.exchange.to_text() for r in answer] == ["mail.example.com."]


def test_a_stopped_server_times_out_within_the_configured_time(dns_server: DnsServer) -> None:
    address = f"{dns_server.host}:{dns_server.port}"
    dns_server.stop()
    resolver = sync_resolver(DnsSettings(nameservers=[address], timeout=0.5))
    with pytest.raises((dns.resolver.LifetimeTimeout, dns.resolver.NoNameservers)):
        resolver.resolve("example.com", "A")
