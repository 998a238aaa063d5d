"""`SocketAddress.parse`: every spelling administrators use, and nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailgate.config import Dynamic
from mailgate.relay import RelaySettings
from mailgate.smtp.settings import SmtpListenerSettings
from mailgate.sockaddr import SocketAddress, is_host_port, parse_host_port

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
HOSTS = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
    st.ip_addresses().map(str),
)
PORTS = st.integers(0, 65535)
PATHS = st.text(st.characters(blacklist_characters="\0", blacklist_categories=["Cs"])).map(
    lambda tail: "/" + tail
)


def tcp_forms(host: str, port: int) -> list[str]:
    """`host` and `port` in every TCP spelling `parse` accepts."""
    bracketed = f"[{host}]" if ":" in host else host
    forms = [
        f"inet:{bracketed}:{port}",
        f"inet:{port}@{host}",
        f"inet6:{bracketed}:{port}",
        f"[{host}]:{port}",
    ]
    if host not in ("inet", "inet6", "unix", "local"):  # "unix:25" is a (bad) unix socket
        forms.append(f"{bracketed}:{port}")
    return forms


@given(HOSTS, PORTS)
def test_every_tcp_spelling_parses_to_the_same_address(host: str, port: int) -> None:
    address = SocketAddress(host=host, port=port)
    for spec in [*tcp_forms(host, port), str(address), address.milter_spec]:
        assert SocketAddress.parse(spec) == address, spec
    assert not address.is_unix


@given(PATHS)
def test_every_unix_spelling_parses_to_the_same_address(path: str) -> None:
    address = SocketAddress(path=path)
    for spec in [f"unix:{path}", f"local:{path}", path, str(address), address.milter_spec]:
        assert SocketAddress.parse(spec) == address, spec
    assert address.is_unix


@pytest.mark.parametrize("host", ["unix", "local", "inet", "inet6"])
def test_a_host_named_like_a_prefix_survives_str(host: str) -> None:
    address = SocketAddress(host=host, port=25)
    assert SocketAddress.parse(str(address)) == address


@pytest.mark.parametrize(
    ("address", "text", "milter_spec"),
    [
        (SocketAddress(host="127.0.0.1", port=3310), "127.0.0.1:3310", "inet:127.0.0.1:3310"),
        (SocketAddress(host="::1", port=783), "[::1]:783", "inet:[::1]:783"),
        (SocketAddress(path="/run/m.sock"), "unix:/run/m.sock", "unix:/run/m.sock"),
    ],
)
def test_spellings_written_back(address: SocketAddress, text: str, milter_spec: str) -> None:
    assert (str(address), address.milter_spec) == (text, milter_spec)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "host",
        "host:",
        ":25",
        "host:port",
        "host:65536",
        "host:-1",
        "host:\u0661\u0662",
        "a b:25",
        "[::1]",
        "inet:nohost",
        "inet:h:99999",
        "inet:25@",
        "unix:",
        "unix:relative.sock",
        "local:run/m.sock",
        "/run/\0.sock",
    ],
)
def test_junk_is_refused_naming_the_forms(spec: str) -> None:
    with pytest.raises(ValueError, match=r"socket address must be HOST:PORT|absolute"):
        SocketAddress.parse(spec)


@given(st.text())
def test_any_text_parses_or_raises_value_error(spec: str) -> None:
    try:
        address = SocketAddress.parse(spec)
    except ValueError:
        return
    assert SocketAddress.parse(str(address)) == address


@given(HOSTS, PORTS)
def test_host_port_round_trips_through_the_socket_address_spelling(host: str, port: int) -> None:
    text = str(SocketAddress(host=host, port=port))
    assert parse_host_port(text) == (host, port)
    assert is_host_port(text)


@given(st.text(max_size=30))
@example("unix:25")
@example("inet:25")
@example("[fe80::1%eth0]:25")
def test_host_port_agrees_with_socket_address_on_any_text(text: str) -> None:
    """`parse_host_port` is the TCP part of `SocketAddress.parse`: where it accepts a text that
    starts with no prefix (``unix:25`` is host ``unix`` to it), both read the same address."""
    try:
        host, port = parse_host_port(text, key="relay.address")
    except ValueError as exc:
        assert str(exc) == f"relay.address must be HOST:PORT or [IPV6]:PORT, not {text!r}"
        assert not is_host_port(text)
        return
    assert is_host_port(text)
    if text.partition(":")[0] not in ("inet", "inet6", "unix", "local"):
        assert SocketAddress.parse(text) == SocketAddress(host=host, port=port)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:25", ("127.0.0.1", 25)),
        ("mx.example:2525", ("mx.example", 2525)),
        ("[::1]:25", ("::1", 25)),
        ("::1:25", ("::1", 25)),
        ("[mx.example]:25", ("mx.example", 25)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_host_port_spellings(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "host", ":25", "host:", "host:65536", "a b:25", "no:such:v6:25", "[::1]", "::1", "a/b:1"],
)
def test_host_port_junk_is_refused_naming_the_key(text: str) -> None:
    with pytest.raises(ValueError, match=r"^metrics\.address must be HOST:PORT or \[IPV6\]:PORT"):
        parse_host_port(text, key="metrics.address")


async def test_open_connection_reaches_tcp_and_unix_servers(tmp_path: Path) -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        writer.close()

    tcp = await asyncio.start_server(greet, "127.0.0.1", 0)
    path = f"{tmp_path}/s.sock"
    unix = await asyncio.start_unix_server(greet, path=path)
    port = tcp.sockets[0].getsockname()[1]
    async with tcp, unix:
        for spec in (f"127.0.0.1:{port}", f"unix:{path}"):
            reader, writer = await SocketAddress.parse(spec).open_connection()
            assert await reader.readline() == b"hello\n"
            writer.close()


def test_listener_and_relay_settings_name_their_address_key() -> None:
    with pytest.raises(ValueError, match=r"^address must be HOST:PORT or \[IPV6\]:PORT"):
        _ = SmtpListenerSettings(address="nohost").host_port
    with pytest.raises(ValueError, match=r"^address must be HOST:PORT or \[IPV6\]:PORT"):
        RelaySettings(address=Dynamic.fixed("nohost"))
    assert SmtpListenerSettings(address="[::1]:0").host_port == ("::1", 0)
