"""Per-transaction settings of the core, through real SMTP sessions to smtp-sink: the listener's
limits by client and login, relay control by session (and never open by accident), the
downstream address by sender; bad rules stop start-up; ``config dump`` writes rules back."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailgate.app import App
from mailgate.config import ConfigError
from mailgate.config_dump import dump
from mailgate.loader import load_config
from mailgate.plugins.auth_file import ScryptHash
from mailgate.relay.egress import RelayEgress
from tests.peers.smtp_sink import SmtpSink, SmtpSinkFactory
from tests.test_config_dump import split_files

LOGIN, SECRET = "alice@example.org", "correct horse battery"
MESSAGE = b"From: a@example.net\r\nTo: b@example.org\r\nSubject: dynamic\r\n\r\n"


async def started(directory: Path, relay: str, listen: str = "127.0.0.2:0") -> App:
    app = App(directory, listen=listen, relay=relay, configure_logs=False)
    await app.start()
    return app


# -- listener limits ----------------------------------------------------------------------------

LIMITS = """\
[[listener]]
auth_require_tls = false
auth_failure_delay = 0.05
max_message_size = [
    { if = "authenticated", then = 20000 },
    { if = 'sender.domain == "big.example"', then = 10000 },
    { if = 'helo == "roomy.example"', then = 5000 },
    { else = 1000 },
]
max_recipients = [{ if = "authenticated", then = 3 }, { else = 2 }]

[relay_control]
domains = ["example.org"]
"""


@pytest.fixture
async def limits_gate(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[App]:
    (tmp_path / "users").write_text(f"{LOGIN}:{ScryptHash.make(SECRET, n=1024)}\n")
    (tmp_path / "mailgate.toml").write_text(LIMITS)
    (tmp_path / "30-auth_file.toml").write_text(f'path = "{tmp_path / "users"}"\n')
    app = await started(tmp_path, f"{smtp_sink.host}:{smtp_sink.port}")
    yield app
    await app.stop()


def session(
    port: int, helo: str, sender: str, body: int, *, login: bool = False
) -> dict[str, object]:
    """One session from 127.0.0.2: the SIZE advertised at EHLO (after AUTH, EHLO again), the
    recipients accepted, and the reply to a message of `body` bytes."""
    with smtplib.SMTP("127.0.0.2", port, source_address=("127.0.0.2", 0), timeout=10) as client:
        client.ehlo(helo)
        advertised = [client.esmtp_features["size"]]
        if login:
            client.login(LOGIN, SECRET)
            client.ehlo(helo)
            advertised.append(client.esmtp_features["size"])
        assert client.mail(sender)[0] == 250
        accepted = sum(client.rcpt(f"u{i}@example.org")[0] == 250 for i in range(4))
        code, _ = client.data(MESSAGE + (b"x" * 98 + b"\r\n") * (body // 100))
        return {"size": advertised, "rcpts": accepted, "data": code}


async def test_listener_limits_follow_the_client_the_login_and_the_sender(
    limits_gate: App, smtp_sink: SmtpSink
) -> None:
    port = limits_gate.ports[0]
    plain = await asyncio.to_thread(session, port, "c.example", "a@example.net", 1500)
    assert plain == {"size": ["1000"], "rcpts": 2, "data": 552}
    roomy = await asyncio.to_thread(session, port, "roomy.example", "a@example.net", 1500)
    assert roomy == {"size": ["5000"], "rcpts": 2, "data": 250}
    # The sender is not known at EHLO: the SIZE advertised is the client's; the limit at DATA
    # is the transaction's.
    big = await asyncio.to_thread(session, port, "c.example", "a@big.example", 8000)
    assert big == {"size": ["1000"], "rcpts": 2, "data": 250}
    login = await asyncio.to_thread(session, port, "c.example", LOGIN, 15000, login=True)
    assert login == {"size": ["1000", "20000"], "rcpts": 3, "data": 250}
    assert len(smtp_sink.wait_for_messages(3)) == 3


def mail_with_size(port: int, helo: str, sender: str, size: int) -> int:
    with smtplib.SMTP("127.0.0.2", port, source_address=("127.0.0.2", 0), timeout=10) as client:
        client.ehlo(helo)
        return client.mail(sender, [f"SIZE={size}"])[0]


async def test_mail_size_parameter_is_checked_against_the_senders_limit(limits_gate: App) -> None:
    port = limits_gate.ports[0]
    assert await asyncio.to_thread(mail_with_size, port, "c.example", "a@example.net", 8000) == 552
    assert await asyncio.to_thread(mail_with_size, port, "c.example", "a@big.example", 8000) == 250


# -- relay control ------------------------------------------------------------------------------

RELAY_CONTROL = """\
[relay_control]
domains = [
    { if = 'listener == "smtp" && helo == "partner.example"', then = [
        "example.org", "partner.test"
    ] },
    { else = ["example.org"] },
]
# The first rule uses the HELO name as a pattern: a HELO of "(" makes it fail at run time.
networks = [
    { if = 're_match(helo, "lab")', then = ["127.0.0.0/8"] },
    { if = 'helo.startsWith("trusted")', then = ["127.0.0.0/8"] },
    { else = ["127.0.0.1/32"] },
]
"""


@pytest.fixture
async def relay_gate(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[App]:
    (tmp_path / "mailgate.toml").write_text(RELAY_CONTROL)
    app = await started(tmp_path, f"{smtp_sink.host}:{smtp_sink.port}")
    yield app
    await app.stop()


def rcpt_codes(port: int, helo: str, rcpts: list[str]) -> list[int]:
    with smtplib.SMTP("127.0.0.2", port, source_address=("127.0.0.2", 0), timeout=10) as client:
        client.ehlo(helo)
        client.mail("a@example.net")
        return [client.rcpt(r)[0] for r in rcpts]


async def test_relay_control_networks_and_domains_follow_the_session(relay_gate: App) -> None:
    port = relay_gate.ports[0]
    rcpts = ["b@example.org", "c@partner.test", "d@elsewhere.test"]
    assert await asyncio.to_thread(rcpt_codes, port, "mx.example", rcpts) == [250, 554, 554]
    assert await asyncio.to_thread(rcpt_codes, port, "partner.example", rcpts) == [250, 250, 554]
    assert await asyncio.to_thread(rcpt_codes, port, "trusted.example", rcpts) == [250, 250, 250]


async def test_a_rule_that_fails_at_run_time_leaves_relaying_closed(relay_gate: App) -> None:
    # "(" is no regular expression: re_match fails, the rule counts as false, the else holds.
    codes = await asyncio.to_thread(rcpt_codes, relay_gate.ports[0], "(", ["d@elsewhere.test"])
    assert codes == [554]


@pytest.mark.parametrize(
    "networks",
    [
        '[{ if = "authenticated", then = ["0.0.0.0/0"] }, { else = ["127.0.0.1/32"] }]',
        '[{ if = "tls", then = ["127.0.0.1/32"] }, { else = ["::/0"] }]',
        '["0.0.0.0/0"]',
    ],
)
def test_no_rule_can_open_the_relay_to_everyone(tmp_path: Path, networks: str) -> None:
    (tmp_path / "mailgate.toml").write_text(f"[relay_control]\nnetworks = {networks}\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert err.value.key == "relay_control.networks"
    assert "open relay" in str(err.value)


def test_relay_control_is_closed_by_default(tmp_path: Path) -> None:
    settings = load_config(tmp_path).relay_control
    assert settings is not None
    assert settings.settings.domains == [] and settings.settings.networks.is_fixed


# -- the downstream address ---------------------------------------------------------------------


@pytest.fixture
def second_sink(smtp_sink_factory: SmtpSinkFactory) -> SmtpSink:
    return smtp_sink_factory()


async def test_downstream_address_follows_the_sender_with_a_pool_per_address(
    tmp_path: Path, smtp_sink: SmtpSink, second_sink: SmtpSink
) -> None:
    default, bulk = f"{smtp_sink.host}:{smtp_sink.port}", f"{second_sink.host}:{second_sink.port}"
    (tmp_path / "mailgate.toml").write_text(
        f'[relay]\naddress = [{{ if = \'sender.domain == "bulk.example"\', then = "{bulk}" }}, '
        f'{{ else = "{default}" }}]\n[relay_control]\ndomains = ["example.org"]\n'
    )
    app = App(tmp_path, listen="127.0.0.2:0", configure_logs=False)
    await app.start()
    try:

        def send_all() -> None:
            port = app.ports[0]
            with smtplib.SMTP("127.0.0.2", port, source_address=("127.0.0.2", 0)) as client:
                client.ehlo("c.example")
                for sender in ("a@bulk.example", "b@example.net", "c@bulk.example"):
                    client.sendmail(sender, ["u@example.org"], MESSAGE + b"hi\r\n")

        await asyncio.to_thread(send_all)
        bulk_got = second_sink.wait_for_messages(2)
        default_got = smtp_sink.wait_for_messages(1)
        assert sorted(m.mail_from for m in bulk_got) == ["a@bulk.example", "c@bulk.example"]
        assert [m.mail_from for m in default_got] == ["b@example.net"]
        egress = app.egresses["relay"]
        assert isinstance(egress, RelayEgress)
        pools = egress.pools
        assert set(pools) == {default, bulk}
        assert (pools[bulk].opened, pools[default].opened) == (1, 1)  # the bulk one reused
    finally:
        await app.stop()


# -- bad rules stop start-up; config dump writes rules back ---------------------------------------


@pytest.mark.parametrize(
    ("file", "text", "key", "reason"),
    [
        (
            "mailgate.toml",
            '[[listener]]\nmax_message_size = [{ if = "authenticated", then = "big" }, '
            "{ else = 1000 }]\n",
            "listener[0].max_message_size[0].then",
            "an integer",
        ),
        (
            "mailgate.toml",
            '[relay]\naddress = [{ if = "rcpt.domain ==", then = "127.0.0.1:25" }, '
            '{ else = "127.0.0.1:26" }]\n',
            "relay.address[0].if",
            "a valid CEL expression",
        ),
        (
            "mailgate.toml",
            '[relay]\naddress = [{ if = "tls", then = "127.0.0.1:25" }]\n',
            "relay.address[1]",
            "a final { else = ... }",
        ),
        (
            "mailgate.toml",
            '[[listener]]\nmax_recipients = [{ if = "authenticated", then = -1 }, { else = 10 }]\n',
            "listener[0].max_recipients",
            "0 or more",
        ),
    ],
)
def test_a_bad_rule_stops_start_up_naming_file_key_and_reason(
    tmp_path: Path, file: str, text: str, key: str, reason: str
) -> None:
    (tmp_path / file).write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert Path(err.value.file).name == file
    assert err.value.key == key
    assert reason in str(err.value)


def test_config_dump_writes_dynamic_keys_as_rules_that_load_back(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "mailgate.toml").write_text(
        LIMITS
        + 'networks = [{ if = "tls", then = ["192.0.2.0/24"] }, { else = ["127.0.0.1/32"] }]\n'
        '[relay]\naddress = [{ if = "authenticated", then = "127.0.0.1:2600" }, '
        '{ else = "127.0.0.1:2525" }]\n'
    )
    (conf / "70-rewrite.toml").write_text(
        'recipients = [{ if = \'sender.domain == "p.example"\', then = { "s@example.org" = '
        '"desk@example.org" } }, { else = { "s@example.org" = "team@example.org" } }]\n'
    )
    (conf / "80-spf.toml").write_text(
        'reject = [{ if = \'helo == "strict.example"\', then = ["fail", "softfail"] }, '
        '{ else = ["fail"] }]\n'
    )
    first = dump(load_config(conf))
    for line in ("max_message_size = [{ if =", "address = [{ if =", "recipients = [{ if ="):
        assert line in first
    again = tmp_path / "again"
    again.mkdir()
    for name, text in split_files(first).items():
        (again / name).write_text(text)
    second = dump(load_config(again))
    assert second.replace(str(again), "DIR") == first.replace(str(conf), "DIR")
    assert load_config(again).relay.address == load_config(conf).relay.address
