"""The limits plugin end to end: a real SMTP client, mailgate's listener, a real smtp-sink.

Every client is on loopback; tests that need a second client address bind 127.0.0.2 (the
whole 127.0.0.0/8 is local on Linux).
"""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest

from mailgate.config import ConfigError
from mailgate.loader import load_config
from tests.peers.smtp_sink import SmtpSink
from tests.plugins.limits.client import greeting, send
from tests.plugins.limits.conftest import Gateway

ROOT = Path(__file__).resolve().parents[3]


async def test_concurrent_connections_per_ip_get_421_and_are_closed(gateway: Gateway) -> None:
    app = await gateway('[[limit]]\nwhat = "concurrent"\nkey = "client.ip"\nmax = 2\n')
    port = app.ports[0]
    held = [await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", port, timeout=10) for _ in "ab"]
    try:
        code, text = await asyncio.to_thread(greeting, port)
        assert code == 421
        assert b"Too many connections from 127.0.0.1" in text
        await asyncio.to_thread(held.pop().quit)
        for _ in range(50):  # the slot is given back when the session ends
            code, _ = await asyncio.to_thread(greeting, port)
            if code == 220:
                break
            await asyncio.sleep(0.1)
        assert code == 220
    finally:
        for client in held:
            await asyncio.to_thread(client.quit)


async def test_the_421_closes_the_connection(gateway: Gateway) -> None:
    app = await gateway('[[limit]]\nwhat = "concurrent"\nmax = 0\n')
    client = smtplib.SMTP(timeout=10)
    code, _ = await asyncio.to_thread(client.connect, "127.0.0.1", app.ports[0])
    assert code == 421
    with pytest.raises(smtplib.SMTPServerDisconnected):
        await asyncio.to_thread(client.ehlo, "client.example")


async def test_connections_per_minute_count_the_network(gateway: Gateway) -> None:
    app = await gateway(
        '[[limit]]\nwhat = "connections"\nkey = "client.ip"\nipv4_prefix = 24\n'
        "window = 60\nmax = 3\n"
    )
    port = app.ports[0]
    codes = [(await asyncio.to_thread(greeting, port))[0] for _ in range(3)]
    assert codes == [220, 220, 220]
    code, text = await asyncio.to_thread(greeting, port, "127.0.0.2")  # same /24
    assert code == 421
    assert b"127.0.0.0/24" in text


async def test_a_host_limit_leaves_the_neighbour_alone(gateway: Gateway) -> None:
    app = await gateway('[[limit]]\nwhat = "connections"\nwindow = 60\nmax = 1\n')
    port = app.ports[0]
    assert (await asyncio.to_thread(greeting, port))[0] == 220
    assert (await asyncio.to_thread(greeting, port))[0] == 421
    assert (await asyncio.to_thread(greeting, port, "127.0.0.2"))[0] == 220


async def test_messages_per_sender_get_450_at_mail(gateway: Gateway, smtp_sink: SmtpSink) -> None:
    app = await gateway('[[limit]]\nwhat = "messages"\nkey = "sender.address"\nmax = 2\n')
    port = app.ports[0]
    for _ in range(2):
        assert (await asyncio.to_thread(send, port, "alice@example.net"))[0] == 250
    code, text, _ = await asyncio.to_thread(send, port, "alice@example.net")
    assert (code, text) == (450, b"4.7.1 Message rate limit exceeded, try again later")
    assert (await asyncio.to_thread(send, port, "carol@example.net"))[0] == 250
    assert len(smtp_sink.wait_for_messages(3)) == 3
    await asyncio.sleep(0.2)
    assert len(smtp_sink.messages()) == 3


async def test_the_null_sender_has_an_empty_key_and_is_not_counted(gateway: Gateway) -> None:
    app = await gateway('[[limit]]\nwhat = "messages"\nkey = "sender.address"\nmax = 1\n')
    for _ in range(3):
        assert (await asyncio.to_thread(send, app.ports[0], ""))[0] == 250


async def test_recipients_per_message_get_452_4_5_3(gateway: Gateway, smtp_sink: SmtpSink) -> None:
    app = await gateway('[[limit]]\nwhat = "recipients"\nwindow = 0\nmax = 2\n')
    rcpts = ("a@example.org", "b@example.org", "c@example.org")
    code, _, replies = await asyncio.to_thread(send, app.ports[0], "alice@example.net", rcpts)
    assert code == 250
    assert replies["c@example.org"] == (452, b"4.5.3 Too many recipients")
    [got] = smtp_sink.wait_for_messages(1)
    assert got.rcpts == ("a@example.org", "b@example.org")


async def test_recipients_per_client_and_window_get_450(gateway: Gateway) -> None:
    app = await gateway('[[limit]]\nwhat = "recipients"\nkey = "client.ip"\nmax = 3\n')
    port = app.ports[0]
    rcpts = ("a@example.org", "b@example.org")
    assert (await asyncio.to_thread(send, port, "alice@example.net", rcpts))[0] == 250
    _, _, replies = await asyncio.to_thread(send, port, "alice@example.net", rcpts)
    assert replies["a@example.org"][0] == 250
    refused = (450, b"4.7.1 Recipient rate limit exceeded, try again later")
    assert replies["b@example.org"] == refused


async def test_message_size_limit_refuses_an_announced_size_at_mail(
    gateway: Gateway, smtp_sink: SmtpSink
) -> None:
    app = await gateway(
        '[[limit]]\nwhat = "bytes"\nkey = "sender.address"\nwindow = 0\nmax = 1000\n'
    )
    code, text, _ = await asyncio.to_thread(send, app.ports[0], size=5000)
    assert (code, text) == (552, b"5.3.4 Message size exceeds the limit")
    big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 20
    code, text, _ = await asyncio.to_thread(send, app.ports[0], message=big)  # no SIZE given
    assert (code, text) == (552, b"5.3.4 Message size exceeds the limit")
    assert (await asyncio.to_thread(send, app.ports[0]))[0] == 250
    assert len(smtp_sink.wait_for_messages(1)) == 1
    await asyncio.sleep(0.2)
    assert len(smtp_sink.messages()) == 1


async def test_bytes_per_window_refuse_the_message_that_goes_past(gateway: Gateway) -> None:
    app = await gateway('[[limit]]\nwhat = "bytes"\nkey = "sender.address"\nmax = 3000\n')
    port = app.ports[0]
    two_k = b"Subject: 2k\r\n\r\n" + (b"y" * 98 + b"\r\n") * 20
    assert (await asyncio.to_thread(send, port, message=two_k))[0] == 250
    code, text, replies = await asyncio.to_thread(send, port, message=two_k)
    assert (code, text) == (451, b"4.7.1 Data rate limit exceeded, try again later")
    assert replies  # refused at the end of data, and not counted:
    assert (await asyncio.to_thread(send, port, message=b"Subject: s\r\n\r\nhi\r\n"))[0] == 250
    code, _, replies = await asyncio.to_thread(send, port, message=two_k, size=len(two_k))
    assert (code, replies) == (451, {})  # SIZE would not fit: refused at MAIL FROM, no data


async def test_max_and_when_are_expressions(gateway: Gateway) -> None:
    app = await gateway(
        "[[limit]]\n"
        'what = "messages"\n'
        'key = "sender.domain"\n'
        "when = 'sender.domain != \"exempt.example\"'\n"
        "max = [{ if = 'sender.domain == \"vip.example\"', then = 3 }, { else = 1 }]\n"
    )
    port = app.ports[0]
    vip = [(await asyncio.to_thread(send, port, "a@vip.example"))[0] for _ in range(4)]
    assert vip == [250, 250, 250, 450]
    other = [(await asyncio.to_thread(send, port, "a@other.example"))[0] for _ in range(2)]
    assert other == [250, 450]
    exempt = [(await asyncio.to_thread(send, port, "a@exempt.example"))[0] for _ in range(3)]
    assert exempt == [250, 250, 250]


async def test_a_sliding_window_lets_the_client_in_again(gateway: Gateway) -> None:
    app = await gateway('[[limit]]\nwhat = "messages"\nwindow = 2\nmax = 1\n')
    port = app.ports[0]
    assert (await asyncio.to_thread(send, port))[0] == 250
    assert (await asyncio.to_thread(send, port))[0] == 450
    await asyncio.sleep(4.05)  # two windows: nothing of the first message is left
    assert (await asyncio.to_thread(send, port))[0] == 250


async def test_counts_survive_a_reload(gateway: Gateway) -> None:
    app = await gateway('[[limit]]\nwhat = "messages"\nmax = 1\n')
    assert (await asyncio.to_thread(send, app.ports[0]))[0] == 250
    assert app.reload()
    assert (await asyncio.to_thread(send, app.ports[0]))[0] == 450


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[[limit]]\nwhat = "messages"\nkey = "sender.nope"\nmax = 1\n', "limit[0].key", "CEL"),
        ('[[limit]]\nwhat = "messages"\nkey = "rcpts"\nmax = 1\n', "limit[0].key", "string"),
        ('[[limit]]\nwhat = "messages"\nwindow = 0\nmax = 1\n', "limit[0].window", "positive"),
        ('[[limit]]\nwhat = "mails"\nmax = 1\n', "limit[0].what", "concurrent"),
        ('[[limit]]\nwhat = "messages"\n', "limit[0].max", "int"),
        ('[[limit]]\nwhat = "messages"\nmax = -1\n', "limit[0].max", "negative"),
        ('[[limit]]\nwhat = "messages"\nmax = 1\nipv4_prefix = 33\n', "ipv4_prefix", "0 to 32"),
        ('redis = "localhost:6379"\n', "redis", "redis://"),
        ("max_keys = 0\n", "max_keys", "at least 1"),
        (
            '[[limit]]\nwhat = "messages"\nmax = 1\n[[limit]]\nwhat = "messages"\nmax = 2\n',
            "limit",
            "named",
        ),
    ],
)
def test_bad_settings_name_the_file_and_key(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    (tmp_path / "15-limits.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    error = caught.value
    assert error.file == str(tmp_path / "15-limits.toml")
    assert error.key.endswith(key)
    assert expected in str(error)


def test_shipped_conf_d_file_is_disabled_and_valid(tmp_path: Path) -> None:
    text = (ROOT / "conf.d" / "15-limits.toml").read_text()
    (tmp_path / "15-limits.toml").write_text(text)
    assert load_config(tmp_path).disabled == [("limits", str(tmp_path / "15-limits.toml"))]
    (tmp_path / "15-limits.toml").write_text(text.replace("enabled = false", "enabled = true"))
    plugins = load_config(tmp_path).pipeline().plugins
    assert [p.name for p in plugins][-1] == "limits"
