"""The clamav plugin against a real clamd, over TCP and a unix socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate import VerdictKind
from mailgate.config import ConfigError, load_settings
from mailgate.pipeline import ErrorPolicy
from mailgate.plugins.clamav import (
    ClamavPlugin,
    ClamavSettings,
    ClamdClient,
    ClamdError,
    ClamdSizeLimitError,
)
from mailgate.plugins.clamav.clamd_client import parse_reply
from mailgate.sockaddr import SocketAddress
from tests.peers.clamd import EICAR, STREAM_MAX_LENGTH, Clamd
from tests.peers.ports import free_port
from tests.plugins import messages as m


def clamav(servers: list[str], **settings: object) -> ClamavPlugin:
    """The plugin with settings as a conf.d file would give them."""
    table = {"servers": servers, **settings}
    return ClamavPlugin(load_settings(ClamavSettings, table, source="50-clamav.toml"))


@pytest.fixture(params=["tcp", "unix"])
def clamd_address(request: pytest.FixtureRequest, clamd: Clamd) -> str:
    """Each test that takes this runs once over TCP and once over the unix socket."""
    return clamd.tcp_address if request.param == "tcp" else clamd.unix_address


@pytest.fixture
async def hanging_server() -> AsyncIterator[str]:
    """A server that accepts connections and never answers: a clamd that hangs."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"127.0.0.1:{port}"
    for w in held:
        w.close()
    server.close()


async def test_eicar_inline_is_rejected_with_the_signature_name(clamd_address: str) -> None:
    verdict, tx = await m.run(m.eicar_inline(), m.enabled("clamav", clamav([clamd_address])))
    assert verdict is not None and verdict.kind is VerdictKind.REJECT
    assert (verdict.code, verdict.status) == (554, "5.7.1")
    assert verdict.text.startswith("Virus found: Eicar-Test-Signature")
    result = tx.results["clamav"]
    assert result.result == "found" and result.reason.startswith("Eicar-Test-Signature")


async def test_eicar_as_base64_attachment_is_found(clamd_address: str) -> None:
    raw = m.with_attachment("eicar.com", EICAR, "application/octet-stream")
    verdict, tx = await m.run(raw, m.enabled("clamav", clamav([clamd_address])))
    assert verdict is not None and verdict.kind is VerdictKind.REJECT
    assert tx.results["clamav"].result == "found"


async def test_eicar_inside_a_zip_is_found(clamd: Clamd) -> None:
    raw = m.with_attachment("archive.zip", m.zipped("eicar.com", EICAR), "application/zip")
    verdict, tx = await m.run(raw, m.enabled("clamav", clamav([clamd.tcp_address])))
    assert verdict is not None and verdict.kind is VerdictKind.REJECT
    assert "Eicar-Test-Signature" in tx.results["clamav"].reason


async def test_clean_message_passes_untouched(clamd_address: str) -> None:
    raw = m.ham()
    verdict, tx = await m.run(raw, m.enabled("clamav", clamav([clamd_address])))
    assert verdict is None
    assert tx.results["clamav"].result == "clean"
    assert tx.modifications == []
    assert m.message_bytes(tx) == raw


async def test_clean_message_can_be_tagged_and_forged_status_is_replaced(clamd: Clamd) -> None:
    raw = m.plain(b"hello\r\n", extra_headers=b"X-Virus-Status: Clean (trust me)\r\n")
    plugin = clamav([clamd.tcp_address], tag_clean=True)
    verdict, tx = await m.run(raw, m.enabled("clamav", plugin))
    assert verdict is None
    assert tx.message is not None
    assert tx.message.get_all("X-Virus-Status") == ["Clean"]


async def test_tag_action_adds_header_and_lets_the_message_through(clamd: Clamd) -> None:
    plugin = clamav([clamd.unix_address], action="tag")
    verdict, tx = await m.run(m.eicar_inline(), m.enabled("clamav", plugin))
    assert verdict is None
    assert tx.message is not None
    status = tx.message.get("X-Virus-Status") or ""
    assert status.startswith("Infected (Eicar-Test-Signature")


async def test_quarantine_action(clamd: Clamd) -> None:
    plugin = clamav([clamd.tcp_address], action="quarantine")
    verdict, tx = await m.run(m.eicar_inline(), m.enabled("clamav", plugin))
    assert verdict is not None and verdict.kind is VerdictKind.QUARANTINE
    assert "Eicar-Test-Signature" in verdict.reason
    assert tx.message is not None and tx.message.get("X-Virus-Status") is not None


async def test_clamd_down_tempfails_by_default() -> None:
    plugin = clamav([f"127.0.0.1:{free_port()}", "unix:/nonexistent/clamd.sock"])
    verdict, tx = await m.run(m.ham(), m.enabled("clamav", plugin))
    assert verdict is not None and verdict.kind is VerdictKind.TEMPFAIL
    assert tx.results["clamav"].result == "error"
    assert "cannot connect" in tx.results["clamav"].reason


async def test_clamd_down_with_on_error_accept_lets_mail_through() -> None:
    plugin = clamav([f"127.0.0.1:{free_port()}"])
    verdict, tx = await m.run(m.ham(), m.enabled("clamav", plugin, on_error=ErrorPolicy.ACCEPT))
    assert verdict is None
    assert tx.results["clamav"].result == "error"


async def test_failover_to_the_next_server(clamd: Clamd) -> None:
    plugin = clamav([f"127.0.0.1:{free_port()}", clamd.unix_address])
    verdict, tx = await m.run(m.eicar_inline(), m.enabled("clamav", plugin))
    assert verdict is not None and verdict.kind is VerdictKind.REJECT
    assert tx.results["clamav"].details["server"] == clamd.unix_address


async def test_hanging_clamd_times_out_and_fails_over(hanging_server: str, clamd: Clamd) -> None:
    plugin = clamav([hanging_server, clamd.tcp_address], scan_timeout=0.3)
    started = time.perf_counter()
    verdict, tx = await m.run(m.eicar_inline(), m.enabled("clamav", plugin))
    assert time.perf_counter() - started < 2.0
    assert verdict is not None and verdict.kind is VerdictKind.REJECT
    assert tx.results["clamav"].details["server"] == clamd.tcp_address


async def test_hanging_clamd_alone_applies_on_error(hanging_server: str) -> None:
    plugin = clamav([hanging_server], scan_timeout=0.3)
    verdict, tx = await m.run(m.ham(), m.enabled("clamav", plugin))
    assert verdict is not None and verdict.kind is VerdictKind.TEMPFAIL
    assert "did not answer" in tx.results["clamav"].reason


@pytest.mark.parametrize(
    ("policy", "kind", "code"),
    [
        ("skip", None, None),
        ("tempfail", VerdictKind.TEMPFAIL, 451),
        ("reject", VerdictKind.REJECT, 552),
    ],
)
async def test_message_over_max_size_follows_policy(
    clamd: Clamd, policy: str, kind: VerdictKind | None, code: int | None
) -> None:
    plugin = clamav([clamd.tcp_address], max_size=1000, over_size=policy)
    verdict, tx = await m.run(m.eicar_inline() + b"x" * 1000, m.enabled("clamav", plugin))
    assert tx.results["clamav"].result == "skipped"
    assert "max_size" in tx.results["clamav"].reason
    if kind is None:
        assert verdict is None
    else:
        assert verdict is not None and (verdict.kind, verdict.code) == (kind, code)


async def test_clamd_stream_limit_is_not_a_silent_pass(clamd: Clamd) -> None:
    plugin = clamav([clamd.tcp_address], max_size=4 * STREAM_MAX_LENGTH, over_size="reject")
    verdict, tx = await m.run(m.padded(STREAM_MAX_LENGTH + 100_000), m.enabled("clamav", plugin))
    assert verdict is not None and verdict.kind is VerdictKind.REJECT
    assert tx.results["clamav"].result == "skipped"
    assert "clamd" in tx.results["clamav"].reason


async def test_large_spooled_message_is_scanned_in_chunks(clamd: Clamd) -> None:
    raw = m.padded(3 * 1024 * 1024) + EICAR + b"\r\n"
    client = ClamdClient([SocketAddress.parse(clamd.unix_address)])
    message = m.make_message(raw, spool_threshold=1024)
    started = time.perf_counter()
    result = await client.scan(lambda: message.iter_bytes())
    elapsed = time.perf_counter() - started
    assert result.infected
    assert elapsed < 2.0, f"3 MiB scan took {elapsed:.3f}s"


async def test_ping_and_version(clamd: Clamd) -> None:
    client = ClamdClient([SocketAddress.parse(clamd.tcp_address)])
    assert await client.command(client.servers[0], b"PING") == b"PONG"
    assert (await client.command(client.servers[0], b"VERSION")).startswith(b"ClamAV")


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match="over_size"):
        clamav(["127.0.0.1:3310"], over_size="ignore")
    with pytest.raises(ConfigError, match="action"):
        clamav(["127.0.0.1:3310"], action="delete")
    with pytest.raises(ConfigError, match="servers"):
        clamav(["localhost"])


@given(
    st.text(
        alphabet=st.characters(blacklist_characters="\0\n", blacklist_categories=["Cs"]), min_size=1
    )
)
def test_reply_parser_reads_any_signature_name(name: str) -> None:
    assert parse_reply(f"stream: {name} FOUND\0".encode()) == name


def test_reply_parser_ok_and_errors() -> None:
    assert parse_reply(b"stream: OK\0") is None
    with pytest.raises(ClamdSizeLimitError):
        parse_reply(b"INSTREAM size limit exceeded. ERROR\0")
    with pytest.raises(ClamdError):
        parse_reply(b"stream: Can't allocate memory ERROR\0")


@given(
    st.one_of(
        st.tuples(st.sampled_from(["127.0.0.1", "::1", "clamd.example"]), st.integers(1, 65535)),
        st.text(alphabet="abc/._-", min_size=1).map(lambda p: "/" + p),
    )
)
def test_address_round_trips(spec: tuple[str, int] | str) -> None:
    if isinstance(spec, str):
        address = SocketAddress.parse(spec)
        assert address.path == spec
        assert SocketAddress.parse(str(address)) == address
    else:
        host, port = spec
        text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        address = SocketAddress.parse(text)
        assert (address.host, address.port) == (host, port)
