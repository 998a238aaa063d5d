"""The PROXY protocol on the SMTP listener, with raw clients playing the proxy: the header's
client becomes the session's, and anything else closes the connection with a log line."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from mailgate.config import ConfigError
from mailgate.loader import load_config
from mailgate.plugin import hookimpl
from mailgate.session import Session
from mailgate.smtp.proxy_protocol import ProxyHeader, encode_v1, encode_v2
from mailgate.smtp.settings import SmtpListenerSettings
from tests.smtp.conftest import GatewayFactory
from tests.smtp.helpers import RecordingEgress, codes, wait_until

MESSAGE = b"From: a@example.com\r\nSubject: proxied\r\n\r\nhello\r\n"
CLIENT = ProxyHeader(1, ("192.0.2.7", 40123), ("198.51.100.1", 25))


class SeesClient:
    """Records the client each session says it has."""

    def __init__(self) -> None:
        self.clients: list[tuple[str, int]] = []

    @hookimpl
    def on_connect(self, session: Session) -> None:
        self.clients.append((session.client_ip, session.client_port))


def proxied_session(port: int, header: bytes, *, source: str = "127.0.0.1") -> bytes:
    """Send `header`, then (if greeted) a whole message; everything the server said."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(header)
        greeting = _read_until_close_or(s, b"\r\n")
        if not greeting.startswith(b"220"):
            return greeting
        s.sendall(
            b"EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
            b"DATA\r\n" + MESSAGE + b".\r\nQUIT\r\n"
        )
        return greeting + _read_until_close_or(s, b"221 ")


def _read_until_close_or(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def gateway(gateway_factory: GatewayFactory, **settings: Any) -> tuple[Any, RecordingEgress, Any]:
    sees = SeesClient()
    egress = RecordingEgress()
    settings.setdefault("proxy_protocol", "any")
    settings.setdefault("proxy_sources", ["127.0.0.0/30"])
    return gateway_factory(egress, [sees], **settings), egress, sees


@pytest.mark.parametrize("encode", [encode_v1, encode_v2])
def test_the_headers_client_is_the_sessions_client(
    gateway_factory: GatewayFactory, encode: Any
) -> None:
    gate, egress, sees = gateway(gateway_factory)
    header = ProxyHeader(2 if encode is encode_v2 else 1, CLIENT.source, CLIENT.destination)
    transcript = proxied_session(gate.port, encode(header))
    assert codes(transcript.decode()) == [220, 250, 250, 250, 354, 250, 221]
    assert sees.clients == [("192.0.2.7", 40123)]
    (delivered,) = egress.delivered
    # The trace header names the real client, not the proxy.
    assert b"(unknown [192.0.2.7])" in delivered.data.split(b"\r\n")[0]


def test_ipv6_client_behind_an_ipv4_proxy(gateway_factory: GatewayFactory) -> None:
    gate, egress, sees = gateway(gateway_factory)
    header = ProxyHeader(2, ("2001:db8::25", 1025), ("2001:db8::1", 25))
    proxied_session(gate.port, encode_v2(header))
    assert sees.clients == [("2001:db8::25", 1025)]
    assert b"[IPv6:2001:db8::25]" in egress.delivered[0].data.split(b"\r\n")[0]


@pytest.mark.parametrize(
    "header",
    [
        encode_v2(ProxyHeader(2, local=True)),  # a health check
        b"PROXY UNKNOWN\r\n",
        encode_v2(ProxyHeader(2)),  # AF_UNSPEC
    ],
    ids=["v2-local", "v1-unknown", "v2-unspec"],
)
def test_headers_without_a_client_keep_the_proxys_address(
    gateway_factory: GatewayFactory, header: bytes
) -> None:
    gate, _, sees = gateway(gateway_factory)
    transcript = proxied_session(gate.port, header, source="127.0.0.2")
    assert transcript.startswith(b"220")
    assert sees.clients[0][0] == "127.0.0.2"


def test_an_untrusted_source_is_refused_before_the_greeting(
    gateway_factory: GatewayFactory, captured_logs: list[dict[str, Any]]
) -> None:
    gate, _, sees = gateway(gateway_factory, proxy_sources=["127.0.0.2", "10.0.0.0/8"])
    # A client connecting directly cannot claim an address, whatever it sends.
    assert proxied_session(gate.port, encode_v1(CLIENT), source="127.0.0.3") == b""
    assert sees.clients == []
    wait_until(lambda: any("untrusted" in line["event"] for line in captured_logs))
    (line,) = [line for line in captured_logs if "untrusted" in line["event"]]
    assert line["level"] == "warning" and line["source"] == "127.0.0.3"
    # From a listed proxy the same header is taken.
    assert proxied_session(gate.port, encode_v1(CLIENT), source="127.0.0.2").startswith(b"220")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"EHLO client.test\r\n", "no PROXY header"),
        (b"PROXY TCP4 192.0.2.300 198.51.100.1 1 25\r\n", "malformed"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.1 1 25" + b" " * 80 + b"\r\n", "longer than 107"),
        (encode_v2(CLIENT)[:12] + b"\x21\x11\xff\xff", "over 2048"),
    ],
)
def test_a_malformed_header_closes_the_connection_with_a_log_line(
    gateway_factory: GatewayFactory,
    captured_logs: list[dict[str, Any]],
    header: bytes,
    reason: str,
) -> None:
    gate, _, sees = gateway(gateway_factory)
    assert proxied_session(gate.port, header) == b""
    assert sees.clients == []
    wait_until(lambda: any(line["event"].startswith("PROXY") for line in captured_logs))
    (line,) = [line for line in captured_logs if line["event"].startswith("PROXY")]
    assert line["event"] == "PROXY protocol: connection closed" and reason in line["reason"]


def test_a_version_not_configured_is_refused(gateway_factory: GatewayFactory) -> None:
    v1_only, _, _ = gateway(gateway_factory, proxy_protocol="v1")
    v2_only, _, _ = gateway(gateway_factory, proxy_protocol="v2")
    v2 = encode_v2(ProxyHeader(2, CLIENT.source, CLIENT.destination))
    assert proxied_session(v1_only.port, v2) == b""
    assert proxied_session(v2_only.port, encode_v1(CLIENT)) == b""
    assert proxied_session(v1_only.port, encode_v1(CLIENT)).startswith(b"220")
    assert proxied_session(v2_only.port, v2).startswith(b"220")


def test_a_proxy_that_sends_no_header_in_time_is_closed(
    gateway_factory: GatewayFactory, captured_logs: list[dict[str, Any]]
) -> None:
    gate, _, _ = gateway(gateway_factory, proxy_timeout=0.3)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 192.0.2.1")  # and nothing more
        assert sock.recv(100) == b""
    assert time.monotonic() - started < 5
    wait_until(lambda: any("no complete header" in str(e.get("reason")) for e in captured_logs))


def test_a_header_split_across_packets_is_read(gateway_factory: GatewayFactory) -> None:
    gate, _, sees = gateway(gateway_factory)
    data = encode_v2(ProxyHeader(2, CLIENT.source, CLIENT.destination, ((4, b"x" * 40),)))
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        for i in range(0, len(data), 7):
            sock.sendall(data[i : i + 7])
            time.sleep(0.01)
        assert sock.recv(100).startswith(b"220")
    assert sees.clients == [("192.0.2.7", 40123)]


def test_per_client_limits_count_the_real_clients(gateway_factory: GatewayFactory) -> None:
    gate, _, _ = gateway(gateway_factory, max_sessions_per_client=1)
    socks = []
    try:
        for n, expected in ((1, b"220"), (2, b"220"), (1, b"421")):
            sock = socket.create_connection(("127.0.0.1", gate.port), timeout=10)
            socks.append(sock)
            sock.sendall(encode_v1(ProxyHeader(1, (f"192.0.2.{n}", 1000), ("192.0.2.99", 25))))
            assert sock.recv(200).startswith(expected), n
    finally:
        for sock in socks:
            sock.close()


def test_with_the_protocol_off_a_proxy_line_is_just_a_bad_command(
    gateway_factory: GatewayFactory,
) -> None:
    gate = gateway_factory(RecordingEgress())
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as sock:
        assert sock.recv(200).startswith(b"220")
        sock.sendall(encode_v1(CLIENT))
        assert sock.recv(200).startswith(b"500 5.5.1")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"proxy_protocol": "on", "proxy_sources": ["127.0.0.1"]}, "proxy_protocol must be one"),
        ({"proxy_protocol": "any"}, "proxy_sources is empty"),
        ({"proxy_protocol": "v1", "proxy_sources": ["10.0.0.0/33"]}, "not an address"),
        ({"proxy_protocol": "v1", "proxy_sources": ["::1"], "proxy_timeout": 0}, "proxy_timeout"),
    ],
)
def test_bad_proxy_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SmtpListenerSettings(**settings)


def test_a_bad_proxy_setting_names_file_and_key(tmp_path: Any) -> None:
    (tmp_path / "mailgate.toml").write_text(
        '[[listener]]\ntype = "smtp"\nproxy_protocol = "v2"\nproxy_sources = ["proxy.example"]\n'
    )
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path)
    text = str(error.value)
    assert "mailgate.toml" in text and "listener[0].proxy_sources" in text
    assert "'proxy.example' is not an address or network" in text


def test_an_ipv4_mapped_proxy_address_is_trusted_as_ipv4() -> None:
    settings = SmtpListenerSettings(proxy_protocol="any", proxy_sources=["127.0.0.1"])
    assert settings.trusted_proxy("::ffff:127.0.0.1")
    assert settings.trusted_proxy("127.0.0.1")
    assert not settings.trusted_proxy("127.0.0.2") and not settings.trusted_proxy("garbage")
