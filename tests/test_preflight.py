"""check-config checks what serve needs: addresses, certificates, the quarantine, file names.

Each mistake is run through ``mailgate check-config`` as an administrator would, and the test
reads what it prints. ``mailgate serve`` on the same mistakes names the file and key too.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate import preflight
from mailgate.config import ConfigError
from mailgate.loader import load_config
from tests.peers.certificate import self_signed_certificate
from tests.peers.ports import free_port
from tests.test_cli import run


def check(conf: Path, core: str) -> tuple[int, str, str]:
    (conf / "mailgate.toml").write_text(core)
    result = run("check-config", "--config", str(conf))
    return result.returncode, result.stdout, result.stderr


def test_two_listeners_on_one_address_are_refused(tmp_path: Path) -> None:
    port = free_port()
    status, _, err = check(
        tmp_path,
        f'[[listener]]\naddress = "127.0.0.1:{port}"\n'
        f'[[listener]]\ntype = "policy"\naddress = "inet:127.0.0.1:{port}"\n',
    )
    assert status == 1
    assert f"{tmp_path}/mailgate.toml: listener[1].address: found " in err
    assert f"expected an address no other listener uses ({tmp_path}/mailgate.toml: " in err
    assert f"listener[0].address is '127.0.0.1:{port}')" in err


def test_a_wildcard_listener_clashes_with_one_on_loopback(tmp_path: Path) -> None:
    port = free_port()
    status, _, err = check(
        tmp_path,
        f'[[listener]]\naddress = "0.0.0.0:{port}"\n'
        f'[[listener]]\ntype = "milter"\naddress = "inet:127.0.0.1:{port}"\n',
    )
    assert status == 1
    assert "listener[1].address" in err and "no other listener uses" in err


def test_the_metrics_address_is_checked_against_the_listeners(tmp_path: Path) -> None:
    port = free_port()
    status, _, err = check(
        tmp_path,
        f'[metrics]\naddress = "127.0.0.1:{port}"\n[[listener]]\naddress = "127.0.0.1:{port}"\n',
    )
    assert status == 1
    assert "mailgate.toml: metrics.address: found" in err and "listener[0].address is" in err


def test_port_zero_twice_is_no_clash(tmp_path: Path) -> None:
    status, _, err = check(
        tmp_path,
        '[[listener]]\naddress = "127.0.0.1:0"\n[[listener]]\naddress = "127.0.0.1:0"\n',
    )
    assert status == 0, err


def test_an_address_that_is_no_ip_address_is_refused(tmp_path: Path) -> None:
    status, _, err = check(tmp_path, '[[listener]]\naddress = "999.1.1.1:25"\n')
    assert status == 1
    assert (
        f'{tmp_path}/mailgate.toml: listener[0].address: found "999.1.1.1:25" (str), '
        "expected an IPv4 address or a host name" in err
    )


def test_a_host_name_that_does_not_resolve_is_refused(tmp_path: Path) -> None:
    status, _, err = check(tmp_path, '[[listener]]\naddress = "no-such-host.invalid:2525"\n')
    assert status == 1
    assert "listener[0].address" in err
    assert "expected a host name that resolves, or an IP address" in err


def test_an_address_of_another_host_is_refused(tmp_path: Path) -> None:
    status, _, err = check(tmp_path, '[[listener]]\naddress = "192.0.2.1:25"\n')
    assert status == 1
    assert "listener[0].address" in err and "expected an address of this host" in err


def test_a_unix_socket_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    status, _, err = check(
        tmp_path,
        f'[[listener]]\ntype = "milter"\naddress = "unix:{tmp_path}/nowhere/milter.sock"\n',
    )
    assert status == 1
    assert "listener[0].address" in err and "a socket in an existing directory" in err


def test_a_port_taken_by_another_process_is_a_warning(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, out, err = check(tmp_path, f'[[listener]]\naddress = "127.0.0.1:{port}"\n')
    assert status == 0, "a running mailgate holds its own ports when a reload is checked"
    assert "configuration OK" in out
    assert f"mailgate: warning: {tmp_path}/mailgate.toml: listener[0].address: " in err
    assert f"127.0.0.1 port {port} is in use" in err


def test_a_missing_certificate_names_tls_cert(tmp_path: Path) -> None:
    status, _, err = check(
        tmp_path,
        f'[[listener]]\naddress = "127.0.0.1:0"\n'
        f'tls_cert = "{tmp_path}/missing.pem"\ntls_key = "{tmp_path}/missing.key"\n',
    )
    assert status == 1
    assert "listener[0].tls_cert" in err and "No such file or directory" in err


def test_a_file_that_is_no_certificate_names_tls_cert(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "tls").mkdir()
    _, key = self_signed_certificate(tmp_path / "tls")
    status, _, err = check(
        tmp_path,
        f'[[listener]]\naddress = "127.0.0.1:0"\n'
        f'tls_cert = "{tmp_path}/cert.pem"\ntls_key = "{key}"\n',
    )
    assert status == 1
    assert "listener[0].tls_cert" in err and "expected a PEM certificate chain" in err


def test_a_key_that_does_not_match_names_tls_key(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    cert, _ = self_signed_certificate(tmp_path / "one")
    _, other_key = self_signed_certificate(tmp_path / "two")
    status, _, err = check(
        tmp_path,
        f'[[listener]]\naddress = "127.0.0.1:0"\ntls_cert = "{cert}"\ntls_key = "{other_key}"\n',
    )
    assert status == 1
    assert "listener[0].tls_key" in err and "expected the PEM private key of tls_cert" in err


def test_a_certificate_that_loads_passes(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    cert, key = self_signed_certificate(tmp_path / "tls")
    status, _, err = check(
        tmp_path, f'[[listener]]\naddress = "127.0.0.1:0"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    assert status == 0, err


DIRECTORY = '[quarantine]\nbackend = "directory"\n'


def test_a_quarantine_directory_that_cannot_be_made_is_refused(tmp_path: Path) -> None:
    # /proc/sys is not writable, even by root: access(2) says so, as the quarantine would find.
    status, _, err = check(
        tmp_path, DIRECTORY + '[relay]\nquarantine_dir = "/proc/sys/mailgate/q"\n'
    )
    assert status == 1
    assert f'{tmp_path}/mailgate.toml: relay.quarantine_dir: found "/proc/sys/mailgate/q"' in err
    assert "expected a directory that exists or can be made" in err


def test_a_quarantine_directory_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "q").write_text("")
    status, _, err = check(tmp_path, DIRECTORY + f'[relay]\nquarantine_dir = "{tmp_path}/q"\n')
    assert status == 1
    assert "relay.quarantine_dir" in err and "expected a directory (it is a file)" in err


def test_a_quarantine_directory_this_user_may_not_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, for whom every directory is writable: access(2) is faked here only.
    (tmp_path / "q").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    (tmp_path / "mailgate.toml").write_text(
        DIRECTORY + f'[relay]\nquarantine_dir = "{tmp_path}/q"\n'
    )
    with pytest.raises(ConfigError) as refused:
        preflight.check(load_config(tmp_path))
    assert refused.value.key == "relay.quarantine_dir"
    assert refused.value.expected == "a directory this user may write"


def test_a_quarantine_directory_that_can_be_made_passes(tmp_path: Path) -> None:
    status, _, err = check(tmp_path, DIRECTORY + f'[relay]\nquarantine_dir = "{tmp_path}/new/q"\n')
    assert status == 0, err


def test_the_default_quarantine_directory_is_only_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mailgate.toml").write_text(DIRECTORY)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    warnings = preflight.check(load_config(tmp_path))
    assert [w.key for w in warnings] == ["relay.quarantine_dir"]


def test_the_quarantine_in_the_store_checks_the_database_directory(tmp_path: Path) -> None:
    status, _, err = check(tmp_path, '[store]\nurl = "sqlite:////proc/sys/mailgate/m.db"\n')
    assert status == 1
    assert f'{tmp_path}/mailgate.toml: store.url: found "sqlite:////proc/sys/mailgate/m.db"' in err
    assert "expected a directory that exists or can be made" in err
    status, _, err = check(tmp_path, f'[store]\nurl = "sqlite:///{tmp_path}/new/m.db"\n')
    assert status == 0, err


def test_the_default_store_that_cannot_be_made_is_only_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr(Path, "exists", lambda self: str(self) == "/")
    warnings = preflight.check(load_config(tmp_path))
    assert [w.key for w in warnings] == ["store.url"]


@pytest.mark.parametrize("name", ["add_header.toml", "20-add_header.conf", "20-add_header"])
def test_a_file_that_looks_like_a_plugin_file_is_a_warning(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text('name = "X-Test"\n')
    (tmp_path / "30-spf.toml.bak").write_text("")
    (tmp_path / "README").write_text("")
    status, out, err = check(tmp_path, "")
    assert status == 0, err
    assert "configuration OK" in out
    assert err.splitlines() == [
        f"mailgate: warning: {tmp_path}/{name}: (file name): found a name mailgate does not "
        'read, expected "NN-name.toml" to enable a plugin, such as "20-add_header.toml"'
    ]


# -- serve names the listener it cannot bind -----------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_serve_names_the_listener_whose_port_is_taken(tmp_path: Path, taken_port: int) -> None:
    (tmp_path / "mailgate.toml").write_text(
        '[[listener]]\naddress = "127.0.0.1:0"\n'
        f'[[listener]]\ntype = "policy"\naddress = "inet:127.0.0.1:{taken_port}"\n'
    )
    result = run("serve", "--config", str(tmp_path))
    assert result.returncode == 1
    assert (
        f"mailgate: configuration error: {tmp_path}/mailgate.toml: listener[1].address: found "
        f'"inet:127.0.0.1:{taken_port}" (str), expected an address this host can listen on '
        "(Address already in use)" in result.stderr
    )


def test_serve_with_listen_names_the_option(taken_port: int) -> None:
    result = run("serve", "--listen", f"127.0.0.1:{taken_port}", "--relay", "127.0.0.1:1")
    assert result.returncode == 1
    assert f'--listen: address: found "127.0.0.1:{taken_port}" (str)' in result.stderr


def test_serve_refuses_a_certificate_that_does_not_load(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "mailgate.toml").write_text(
        f'[[listener]]\naddress = "127.0.0.1:0"\n'
        f'tls_cert = "{tmp_path}/cert.pem"\ntls_key = "{tmp_path}/cert.pem"\n'
    )
    result = run("serve", "--config", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path}/mailgate.toml: listener[0].tls_cert" in result.stderr


RELAY_RULES = """
[relay]
address = [
    { if = 'sender.domain == "news.example.org"', then = "127.0.0.1:10026" },
    { else = "127.0.0.1:10025" },
]
"""
QUEUED = '[[listener]]\ntype = "smtp"\naddress = "127.0.0.1:0"\negress = "queue"\n'


def test_relay_rules_with_a_queue_are_a_warning_naming_where_queued_mail_goes(
    tmp_path: Path,
) -> None:
    (tmp_path / "mailgate.toml").write_text(QUEUED + RELAY_RULES)
    (warning,) = [w for w in preflight.check(load_config(tmp_path)) if w.key == "relay.address"]
    assert "expected one address for queued mail" in str(warning)
    assert "queued mail goes to 127.0.0.1:10025 (the rules' else)" in str(warning)

    (tmp_path / "mailgate.toml").write_text(
        QUEUED + RELAY_RULES + '[queue]\nnext_hop = "127.0.0.1:10027"\n'
    )
    assert not [w for w in preflight.check(load_config(tmp_path)) if w.key == "relay.address"]
    (tmp_path / "mailgate.toml").write_text(RELAY_RULES)  # no queue: the rules are the relay's
    assert not [w for w in preflight.check(load_config(tmp_path)) if w.key == "relay.address"]
