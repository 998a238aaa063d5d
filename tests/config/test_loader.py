"""The configuration directory: core tables, plugin files in name order, errors with file/key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate import event_loop, loader
from mailgate.config import ConfigError
from mailgate.loader import installed_plugins, load_config
from mailgate.pipeline import ErrorPolicy
from mailgate.plugins.add_header import AddHeader
from mailgate.plugins.relay_control import RelayControl


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_no_files_at_all_gives_working_defaults(tmp_path: Path) -> None:
    for config in (load_config(tmp_path), load_config(None)):
        assert [lc.type for lc in config.listeners] == ["smtp"]
        assert config.listeners[0].settings.address == "127.0.0.1:2525"
        assert config.relay.address == "127.0.0.1:25"
        assert [p.name for p in config.chain] == ["relay_control", "sender_auth"]
        assert config.logging.format == "json"


def test_listen_and_relay_override(tmp_path: Path) -> None:
    write(tmp_path, "mailgate.toml", '[[listener]]\naddress = "127.0.0.1:2600"\nname = "in"\n')
    config = load_config(tmp_path, listen="127.0.0.1:2700", relay="[::1]:2525")
    assert config.listeners[0].settings.address == "127.0.0.1:2700"
    assert config.listeners[0].settings.name == "in"
    assert config.relay.address == "[::1]:2525"


def test_bad_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match='--listen: address: found "2525" \\(str\\)'):
        load_config(None, listen="2525")


def test_core_tables(tmp_path: Path) -> None:
    write(
        tmp_path,
        "mailgate.toml",
        """
[mailgate]
hostname = "gate.example.net"
[logging]
level = "debug"
format = "console"
[[listener]]
type = "smtp"
address = "127.0.0.1:2526"
max_recipients = 10
[relay]
address = "127.0.0.1:10025"
pool_size = 2
[relay_control]
domains = ["example.org", ".example.net"]
networks = ["192.0.2.0/24"]
""",
    )
    config = load_config(tmp_path)
    assert config.mailgate.hostname == "gate.example.net"
    assert (config.logging.level, config.logging.format) == ("debug", "console")
    assert config.listeners[0].settings.max_recipients == 10
    assert (config.relay.address.default, config.relay.pool_size) == ("127.0.0.1:10025", 2)
    assert config.relay_control is not None
    assert config.relay_control.settings.domains == ["example.org", ".example.net"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[relay]\naddress = 42\n", 'relay.address: found 42 (int), expected "host:port"'),
        ('[relay]\naddress = "nowhere"\n', 'relay.address: found "nowhere" (str)'),
        ('[relay]\naddress = "[::1]:99999"\n', 'relay.address: found "[::1]:99999" (str)'),
        (
            '[relay]\naddress = "mx.example:0"\n',
            'relay.address: found "mx.example:0" (str), expected a port from 1 to 65535',
        ),
        ('[[listener]]\naddress = "no:such:v6:25"\n', 'listener[0].address: found "no:such:v6:'),
        ('[metrics]\naddress = "nohost"\n', 'metrics.address: found "nohost" (str)'),
        (
            "[relai]\n",
            "relai: found an unknown key, expected one of authentication_results, console, dns, "
            "listener",
        ),
        ('[[listener]]\ntype = "pop3"\n', 'listener[0].type: found "pop3" (str)'),
        ("[[listener]]\nmax_recipient = 3\n", 'did you mean "max_recipients"?'),
        ('[logging]\nformat = "xml"\n', 'logging.format: found "xml" (str), expected one of'),
        ('[relay_control]\nnetworks = ["x"]\n', "relay_control.networks: found"),
        ('[relay_control]\nwhen = "tls +"\n', "relay_control.when:"),
        ("[relay\n", "(syntax)"),
    ],
)
def test_core_errors(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, "mailgate.toml", text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert str(err.value).startswith(str(tmp_path / "mailgate.toml"))
    assert message in str(err.value)


def test_plugin_files_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, "20-add_header.toml", 'name = "X-Second"\n')
    write(tmp_path, "10-first.toml", 'plugin = "add_header"\nname = "X-First"\ntimeout = 2\n')
    write(tmp_path, "30-add_header.toml", "enabled = false\n")
    write(tmp_path, "notes.txt", "not a plugin file")
    config = load_config(tmp_path)
    assert [(p.name, Path(p.source).name) for p in config.plugins] == [
        ("add_header", "10-first.toml"),
        ("add_header", "20-add_header.toml"),
    ]
    assert config.plugins[0].timeout == 2.0
    pipeline = config.pipeline()
    instances = [p.instance for p in pipeline.plugins]
    assert isinstance(instances[0], RelayControl)
    assert [i.settings.name for i in instances[1:] if isinstance(i, AddHeader)] == [
        "X-First",
        "X-Second",
    ]


def test_run_options(tmp_path: Path) -> None:
    write(
        tmp_path,
        "10-add_header.toml",
        'when = \'sender.domain == "example.org"\'\non_error = "accept"\nconcurrent = true\n',
    )
    write(tmp_path, "20-clamav.toml", "")
    first, second = load_config(tmp_path).plugins
    assert first.on_error is ErrorPolicy.ACCEPT and first.concurrent
    assert first.when is not None and first.when.source == 'sender.domain == "example.org"'
    assert second.concurrent, "a scanner's class default (concurrent = True) applies"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("10-nosuch.toml", "", 'plugin: found "nosuch" (str), expected an installed plugin ('),
        ("10-add_header.toml", 'nmae = "X"\n', "nmae: found an unknown key"),
        ("10-add_header.toml", "name = 1\n", "name: found 1 (int), expected a string"),
        ("10-add_header.toml", 'when = "client.ip =="\n', "when: found"),
        ("10-add_header.toml", 'on_error = "ignore"\n', 'on_error: found "ignore" (str)'),
        ("10-add_header.toml", "timeout = -1\n", "timeout: found -1 (int)"),
        ("10-add_header.toml", 'enabled = "no"\n', 'enabled: found "no" (str)'),
        ("10-relay_control.toml", "", "relay_control is set in mailgate.toml"),
        ("10-sender_auth.toml", "", "sender_auth is set in mailgate.toml"),
    ],
)
def test_plugin_file_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    write(tmp_path, name, text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / name}: ")
    assert message in str(err.value)


def test_bad_when_has_its_position(tmp_path: Path) -> None:
    write(tmp_path, "10-add_header.toml", 'when = "client.ip =="\n')
    with pytest.raises(ConfigError, match="at 1:13"):
        load_config(tmp_path)


def test_dynamic_plugin_setting(tmp_path: Path) -> None:
    write(
        tmp_path,
        "10-add_header.toml",
        'value = [{ if = "tls", then = "encrypted" }, { else = "plain" }]\n',
    )
    (plugin,) = load_config(tmp_path).plugins
    assert plugin.settings.value.rules[0][1] == "encrypted"


def test_bundled_plugins_are_entry_points() -> None:
    assert {"relay_control", "add_header"} <= set(installed_plugins())


def test_relay_control_can_be_turned_off(tmp_path: Path) -> None:
    write(tmp_path, "mailgate.toml", "[relay_control]\nenabled = false\n")
    assert [p.name for p in load_config(tmp_path).chain] == ["sender_auth"]


def test_sender_auth_is_built_in_and_configured_in_mailgate_toml(tmp_path: Path) -> None:
    write(
        tmp_path,
        "mailgate.toml",
        '[sender_auth]\ndomains = ["example.org"]\nallowed = { "*" = ["@example.net"] }\n',
    )
    config = load_config(tmp_path)
    assert config.sender_auth is not None
    assert config.sender_auth.settings.domains == ["example.org"]
    assert config.sender_auth.settings.allowed == {"*": ["@example.net"]}
    write(tmp_path, "mailgate.toml", "[sender_auth]\nenabled = false\n")
    assert [p.name for p in load_config(tmp_path).chain] == ["relay_control"]
    write(tmp_path, "mailgate.toml", "[sender_auth]\nallowed = []\n")
    with pytest.raises(ConfigError, match=r"sender_auth\.allowed: found"):
        load_config(tmp_path)


def test_reads_comes_from_the_plugin_class_not_from_confd(tmp_path: Path) -> None:
    write(tmp_path, "10-add_header.toml", "")
    write(tmp_path, "20-clamav.toml", "")
    write(tmp_path, "30-spamassassin.toml", "")
    write(tmp_path, "40-milter.toml", "")
    pipeline = load_config(tmp_path).pipeline()
    reads = {p.name: p.reads for p in pipeline.plugins}
    both = frozenset({"headers", "body"})
    expected = {
        "relay_control": frozenset(),
        "add_header": frozenset(),
        "clamav": both,
        "spamassassin": both,
        "milter": both,
    }
    assert {name: reads[name] for name in expected} == expected
    write(tmp_path, "10-add_header.toml", 'reads = ["headers", "body"]\n')
    with pytest.raises(ConfigError, match="reads: found an unknown key"):
        load_config(tmp_path)


def test_a_plugin_with_a_bad_reads_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AddHeader, "reads", "headers")
    write(tmp_path, "10-add_header.toml", "")
    expected = "plugin add_header: reads must be a set of 'headers' and 'body', not 'headers'"
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert str(err.value) == f"{tmp_path / '10-add_header.toml'}: {expected}"


def test_event_loop_defaults_to_auto_and_refuses_unknown_values(tmp_path: Path) -> None:
    assert load_config(tmp_path).mailgate.event_loop == "auto"
    write(tmp_path, "mailgate.toml", '[mailgate]\nevent_loop = "trio"\n')
    with pytest.raises(ConfigError, match=r"mailgate\.event_loop"):
        load_config(tmp_path)


def test_event_loop_uvloop_without_uvloop_stops_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine without uvloop cannot be made on demand here: its absence is faked.
    monkeypatch.setattr(loader, "uvloop_available", lambda: False)
    write(tmp_path, "mailgate.toml", '[mailgate]\nevent_loop = "uvloop"\n')
    with pytest.raises(ConfigError, match="uvloop is not installed") as caught:
        load_config(tmp_path)
    assert caught.value.key == "mailgate.event_loop"
    write(tmp_path, "mailgate.toml", '[mailgate]\nevent_loop = "auto"\n')
    assert event_loop.resolve(load_config(tmp_path).mailgate.event_loop) == "uvloop"
