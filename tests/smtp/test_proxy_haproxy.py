"""A real HAProxy in front of mailgate, with ``send-proxy`` (v1) and ``send-proxy-v2``.

Clients connect to HAProxy from 127.0.0.2 and 127.0.0.3; HAProxy connects to mailgate from
127.0.0.1. The real client must reach everything that looks at the client: the trace header,
the downstream (Postfix, told with XCLIENT) and relay control. A proxy whose address is not
in ``proxy_sources`` is refused.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.app import App
from tests.peers.haproxy import Frontend, HAProxyFactory
from tests.peers.postfix import Postfix
from tests.peers.smtp_sink import SmtpSink
from tests.smtp.conftest import GatewayFactory, relay_to
from tests.smtp.helpers import wait_until

MESSAGE = b"From: a@example.net\r\nTo: b@example.org\r\nSubject: via haproxy\r\n\r\nhello\r\n"


def send(port: int, source: str, rcpts: list[str]) -> dict[str, tuple[int, bytes]]:
    """Send from `source` through the proxy at `port`; the refused recipients."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10) as client:
        client.ehlo("client.example.net")
        client.mail("a@example.net")
        refused = {}
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            if code != 250:
                refused[rcpt] = (code, text)
        if len(refused) < len(rcpts):
            assert client.data(MESSAGE)[0] == 250
        return refused


def test_the_real_client_reaches_the_downstream_with_v1_and_v2(
    gateway_factory: GatewayFactory,
    haproxy_factory: HAProxyFactory,
    postfix: Postfix,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    gate = gateway_factory(
        relay_to(postfix.host, postfix.port, tmp_path / "q"),
        proxy_protocol="any",
        proxy_sources=["127.0.0.1"],
    )
    proxy = haproxy_factory(
        [
            Frontend("smtp_v1", ("127.0.0.1", gate.port), "v1"),
            Frontend("smtp_v2", ("127.0.0.1", gate.port), "v2"),
        ]
    )
    assert send(proxy.port("smtp_v1"), "127.0.0.2", ["x@elsewhere.test"]) == {}
    assert send(proxy.port("smtp_v2"), "127.0.0.3", ["y@elsewhere.test"]) == {}
    first, second = sorted(smtp_sink.wait_for_messages(2), key=lambda m: m.rcpts)
    for message, client in ((first, "127.0.0.2"), (second, "127.0.0.3")):
        received = [line for line in message.data.split(b"\r\n") if line.startswith(b"Received")]
        # Postfix's line (XCLIENT made it take the connection as the client's) above
        # mailgate's: both name the real client, neither HAProxy's 127.0.0.1.
        assert len(received) == 2, message.data[:600]
        assert received[0].startswith(
            b"Received: from client.example.net (unknown [%s])" % (client.encode())
        ), received[0]
        assert b"[%s]" % client.encode() in received[1]
    lines = postfix.wait_for_log(r"client=unknown\[127\.0\.0\.3\], orig_queue_id=t")
    assert lines is not None
    assert "client=unknown[127.0.0.2], orig_queue_id=t" in postfix.maillog()


def test_a_proxy_outside_proxy_sources_is_refused(
    gateway_factory: GatewayFactory,
    haproxy_factory: HAProxyFactory,
    captured_logs: list[dict[str, Any]],
) -> None:
    gate = gateway_factory(proxy_protocol="v2", proxy_sources=["127.0.0.9"])
    proxy = haproxy_factory(
        [
            Frontend("untrusted", ("127.0.0.1", gate.port), "v2"),
            Frontend("trusted", ("127.0.0.1", gate.port), "v2", source="127.0.0.9"),
        ]
    )
    with socket.create_connection(("127.0.0.1", proxy.port("untrusted")), timeout=10) as sock:
        assert sock.recv(100) == b""  # closed without a greeting
    wait_until(lambda: any("untrusted" in line["event"] for line in captured_logs))
    (line,) = [line for line in captured_logs if "untrusted" in line["event"]]
    assert line["source"] == "127.0.0.1"
    # The same proxy connecting from a listed address is served, for the real client.
    with socket.create_connection(
        ("127.0.0.1", proxy.port("trusted")), timeout=10, source_address=("127.0.0.4", 0)
    ) as sock:
        assert sock.recv(100).startswith(b"220 ")
        sock.sendall(b"QUIT\r\n")
        assert sock.recv(100).startswith(b"221")
    starts = [line for line in captured_logs if line["event"] == "session start"]
    assert [line["client"] for line in starts] == ["127.0.0.4"]


@pytest.fixture
async def gate_behind_haproxy(
    tmp_path: Path, smtp_sink: SmtpSink, haproxy_factory: HAProxyFactory
) -> AsyncIterator[int]:
    """mailgate configured from a file: PROXY from 127.0.0.1 only, and only 127.0.0.2 may
    relay. Yields the port of an HAProxy (v2) in front of it."""
    (tmp_path / "mailgate.toml").write_text(
        '[[listener]]\ntype = "smtp"\naddress = "127.0.0.1:0"\nproxy_protocol = "v2"\n'
        'proxy_sources = ["127.0.0.1/32"]\n\n'
        '[relay_control]\ndomains = ["example.org"]\nnetworks = ["127.0.0.2/32"]\n'
    )
    app = App(tmp_path, relay=f"{smtp_sink.host}:{smtp_sink.port}", configure_logs=False)
    await app.start()
    proxy = await asyncio.to_thread(
        haproxy_factory, [Frontend("smtp", ("127.0.0.1", app.ports[0]), "v2")]
    )
    yield proxy.port("smtp")
    await app.stop()


async def test_relay_control_sees_the_real_client(
    gate_behind_haproxy: int, smtp_sink: SmtpSink
) -> None:
    port = gate_behind_haproxy
    # 127.0.0.2 is in networks: it may relay. 127.0.0.3 is not, nor is HAProxy's 127.0.0.1.
    assert await asyncio.to_thread(send, port, "127.0.0.2", ["x@elsewhere.test"]) == {}
    refused = await asyncio.to_thread(
        send, port, "127.0.0.3", ["x@elsewhere.test", "b@example.org"]
    )
    assert refused == {"x@elsewhere.test": (554, b"5.7.1 Relay access denied")}
    messages = await asyncio.to_thread(smtp_sink.wait_for_messages, 2)
    assert sorted(m.rcpts for m in messages) == [("b@example.org",), ("x@elsewhere.test",)]
