"""``milters = [...]``: several milters in one conf.d file, run in list order."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from mailgate.config import ConfigError
from mailgate.loader import load_config
from mailgate.plugins.milter import MilterPlugin
from tests.peers.certificate import named_certificate
from tests.peers.smtp_sink import SmtpSink
from tests.plugins.milter.conftest import ActionMilterFactory, BridgeFactory, milter_list

MESSAGE = (
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: chain\r\nX-Drop: x\r\n\r\nhello\r\n"
)


def test_the_list_runs_in_order_each_seeing_what_the_one_before_left(
    action_milter_factory: ActionMilterFactory, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    first, second = action_milter_factory("A"), action_milter_factory("B")
    gw = bridge_factory(milter_list({"address": first, "name": "a"}, {"address": second}))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.sendmail("s@example.com", ["b@example.com"], MESSAGE)
    [tx] = smtp_sink.wait_for_messages(1)
    # B saw the Subject A changed and the body A replaced.
    assert tx.header("X-A-Subject") == "chain"
    assert tx.header("X-B-Subject") == "changed by A"
    assert tx.header("X-B-Body-Len") == str(len(b"body replaced by A\r\n"))
    assert tx.header("Subject") == "changed by B"


def test_a_recipient_the_first_refuses_reaches_the_second_as_refused(
    action_milter_factory: ActionMilterFactory, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    first, second = action_milter_factory("A"), action_milter_factory("B")
    gw = bridge_factory(milter_list({"address": first}, {"address": second}))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        refused = client.sendmail(
            "s@example.com", ["rcpt-reject@example.com", "b@example.com"], MESSAGE
        )
    assert refused == {"rcpt-reject@example.com": (550, b"5.1.1 no such user here")}
    [tx] = smtp_sink.wait_for_messages(1)
    # B asked for refused recipients: it heard of the one A refused.
    assert tx.header("X-B-Refused") == "<rcpt-reject@example.com> 5.1.1 no such user here"
    # (then A's added recipients, sent to B with the message)
    assert (tx.header("X-B-Rcpts") or "").split(",")[0] == "<b@example.com>"
    assert "rcpt-reject" not in (tx.header("X-B-Rcpts") or "")


def write(directory: Path, text: str) -> Path:
    (directory / "40-milters.toml").write_text(text)
    return directory


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (
            'plugin = "milter"\nmilters = [{address = "inet:127.0.0.1:1"}, '
            '{address = "inet:127.0.0.1:2"}, {address = "tcp:nowhere"}]\n',
            "milters[2].address",
            "inet:HOST:PORT",
        ),
        (
            'plugin = "milter"\nmilters = [{address = "inet:127.0.0.1:1", eom_timeout = 0}]\n',
            "milters[0].eom_timeout",
            "must be positive",
        ),
        (
            'plugin = "milter"\nmilters = [{address = "inet:127.0.0.1:1", stage = ["rcpt"]}]\n',
            "milters[0].stage",
            "stages",
        ),
        (
            'plugin = "milter"\naddress = "inet:127.0.0.1:1"\n'
            'milters = [{address = "inet:127.0.0.1:2"}]\n',
            "address",
            "together with milters",
        ),
        (
            'plugin = "milter"\nmilters = [{address = "inet:127.0.0.1:1"}, '
            '{address = "inet:127.0.0.1:1"}]\n',
            "milters",
            "both named",
        ),
    ],
    ids=["address", "timeout", "unknown-key", "both-forms", "duplicate"],
)
def test_config_errors_name_the_file_and_the_entry(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path).pipeline()
    message = str(err.value)
    assert "40-milters.toml" in message, message
    assert err.value.key == key, message
    assert reason in message, message


def test_a_good_list_loads(tmp_path: Path) -> None:
    write(
        tmp_path,
        'plugin = "milter"\nmilters = [\n'
        '  { address = "inet:127.0.0.1:8891", name = "opendkim", stages = ["message"] },\n'
        '  { address = "unix:/run/clamav/clamav-milter.ctl", name = "clamav" },\n]\n',
    )
    [plugin] = [p for p in load_config(tmp_path).pipeline().plugins if p.name == "milter"]
    assert isinstance(plugin.instance, MilterPlugin)
    assert [m.name for m in plugin.instance.milters] == ["opendkim", "clamav"]


ROOT = Path(__file__).resolve().parents[3]


def test_the_shipped_file_and_its_list_example_load(tmp_path: Path) -> None:
    shipped = (ROOT / "conf.d" / "40-milter.toml").read_text()
    (tmp_path / "40-milter.toml").write_text(shipped)
    config = load_config(tmp_path)
    assert config.disabled == [("milter", str(tmp_path / "40-milter.toml"))]
    # The commented list example, switched on in place of the single-milter keys.
    lines = shipped.splitlines()
    start = next(i for i, line in enumerate(lines) if line == "# [[milters]]")
    example = "\n".join(line.removeprefix("#").removeprefix(" ") for line in lines[start:])
    (tmp_path / "40-milter.toml").write_text(f'plugin = "milter"\n{example}\n')
    with pytest.raises(ConfigError) as err:  # the CA file of the example does not exist here
        load_config(tmp_path).pipeline()
    assert "milters[1].tls_ca_file: cannot load /etc/mailgate/milter-ca.pem" in str(err.value)
    ca, _ = named_certificate(tmp_path, "scanner.example.net")
    example = example.replace("/etc/mailgate/milter-ca.pem", ca)
    (tmp_path / "40-milter.toml").write_text(f'plugin = "milter"\n{example}\n')
    [plugin] = [p for p in load_config(tmp_path).pipeline().plugins if p.name == "milter"]
    assert isinstance(plugin.instance, MilterPlugin)
    assert [m.name for m in plugin.instance.milters] == ["clamav", "rspamd"]
    assert plugin.instance.milters[1].settings.tls is True
