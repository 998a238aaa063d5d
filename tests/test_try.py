"""``mailgate try``: one message through a real configuration, run as the command a user runs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.clamd import EICAR, Clamd, start_clamd
from tests.peers.ports import free_port
from tests.peers.workdir import PeerDirs
from tests.test_cli import MAILGATE

MESSAGE = (
    b"From: Alice <alice@example.com>\n"
    b"To: Bob <bob@example.net>\n"
    b"Cc: carol@local.test\n"
    b"Subject: Hello\n"
    b"\n"
    b"Hi Bob,\n"
    b".a line that starts with a dot\n"
)


def run_try(conf: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """``mailgate try --config conf ARGS`` as a subprocess."""
    return subprocess.run(
        [*MAILGATE, "try", "--config", str(conf), *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_json(conf: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = run_try(conf, "--json", *args)
    return result.returncode, json.loads(result.stdout)


def calls(doc: dict[str, Any], stage: str) -> list[dict[str, Any]]:
    """Every plugin call recorded at `stage` (all RCPTs together)."""
    return [c for s in doc["stages"] if s["stage"] == stage for c in s["calls"]]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    directory = tmp_path / "conf"
    directory.mkdir()
    return directory


@pytest.fixture
def message(tmp_path: Path) -> Path:
    path = tmp_path / "message.eml"
    path.write_bytes(MESSAGE)
    return path


@pytest.fixture(scope="module")
def clamd(peer_dirs: PeerDirs) -> Iterator[Clamd]:
    peer = start_clamd(peer_dirs.new("clamd-try"))
    yield peer
    peer.daemon.stop()


def test_add_header_is_shown_and_written(conf: Path, message: Path, tmp_path: Path) -> None:
    (conf / "10-add_header.toml").write_text(
        'name = "X-Tried"\nvalue = [{ if = "tls", then = "yes (TLS)" }, { else = "yes" }]\n'
    )
    out = tmp_path / "out.eml"
    result = run_try(conf, str(message), "--tls", "--output", str(out))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "sender <alice@example.com> (from From header)" in text
    assert "recipients <bob@example.net>, <carol@local.test> (from To/Cc headers)" in text
    assert "add_header.on_message" in text
    assert "+ add header X-Tried: yes (TLS)" in text
    assert "Result: accepted: would relay to 127.0.0.1:25 (not contacted)" in text
    assert "  X-Tried: yes (TLS)" in text.split("Final headers:")[1]
    written = out.read_bytes()
    head, _, body = written.partition(b"\r\n\r\n")
    assert head.startswith(b"Authentication-Results: ")  # the core's, first
    assert b"\r\nReceived: from localhost (unknown [127.0.0.1])" in head
    assert b"with ESMTPS id" in head
    assert head.endswith(b"\r\nX-Tried: yes (TLS)")
    assert body == b"Hi Bob,\r\n.a line that starts with a dot\r\n"


def test_rcpt_refused_by_a_plugin_whose_when_is_true_only(conf: Path, message: Path) -> None:
    (conf / "mailgate.toml").write_text(
        "[relay_control]\nnetworks = []\nwhen = 'rcpt.domain != \"local.test\"'\n"
    )
    code, doc = run_json(conf, str(message), "--client", "192.0.2.7")
    assert code == 0
    bob, carol = [s for s in doc["stages"] if s["stage"] == "rcpt"]
    assert bob["subject"] == "<bob@example.net>"
    [called] = bob["calls"]
    assert called["plugin"] == "relay_control" and called["status"] == "ok"
    assert called["verdict"]["reply"] == "554 5.7.1 Relay access denied"
    assert bob["reply"] == "554 5.7.1 Relay access denied"
    [skipped] = carol["calls"]
    assert skipped["status"] == "skipped"
    assert skipped["when"] == 'rcpt.domain != "local.test"'
    assert carol["reply"] == "250 2.1.5 Recipient OK"
    assert doc["envelope"]["recipients"] == ["carol@local.test"]
    assert doc["result"]["refused_recipients"] == [
        {"address": "bob@example.net", "reply": "554 5.7.1 Relay access denied"}
    ]


def test_every_recipient_refused_ends_the_run_with_exit_5(conf: Path, message: Path) -> None:
    (conf / "mailgate.toml").write_text("[relay_control]\nnetworks = []\n")
    (conf / "10-add_header.toml").write_text("")
    result = run_try(conf, str(message), "--client", "192.0.2.7", "--rcpt", "x@example.net")
    assert result.returncode == 5, result.stderr
    assert "recipients <x@example.net> (from --rcpt)" in result.stdout
    assert "Result: rejected at rcpt: 554 5.7.1 Relay access denied" in result.stdout
    assert "add_header" not in result.stdout, "no DATA, so no on_message"


def test_clamav_rejects_eicar_with_the_signature_name(
    conf: Path, tmp_path: Path, clamd: Clamd
) -> None:
    (conf / "50-clamav.toml").write_text(f'servers = ["{clamd.host}:{clamd.port}"]\n')
    infected = tmp_path / "eicar.eml"
    infected.write_bytes(MESSAGE + EICAR + b"\n")
    out = tmp_path / "out.eml"
    result = run_try(conf, str(infected), "--output", str(out))
    assert result.returncode == 5, result.stderr
    text = result.stdout
    assert "clamav.on_message" in text
    assert "reject: 554 5.7.1 Virus found: Eicar-Test-Signature" in text
    assert "Result: rejected at message: 554 5.7.1 Virus found: Eicar-Test-Signature" in text
    assert "not written: the message would not be delivered" in text
    assert not out.exists()


def test_clamav_passes_a_clean_message(conf: Path, message: Path, clamd: Clamd) -> None:
    (conf / "50-clamav.toml").write_text(
        f'servers = ["unix:{clamd.socket_path}"]\ntag_clean = true\n'
    )
    code, doc = run_json(conf, str(message))
    assert code == 0
    [scan] = calls(doc, "message")
    assert scan["status"] == "ok" and scan["verdict"] is None
    assert [m["text"] for m in scan["modifications"]] == ["add header X-Virus-Status: Clean"]
    assert {"name": "X-Virus-Status", "value": "Clean"} in doc["headers"]


@pytest.mark.parametrize(
    ("policy", "code", "then"),
    [
        ("reject", 5, "554 5.3.0 Local policy failure"),
        ("tempfail", 4, "451 4.3.0 Temporary local problem, try again later"),
        ("accept", 0, "go on"),
    ],
)
def test_a_failing_plugin_shows_why_and_its_on_error(
    conf: Path, message: Path, policy: str, code: int, then: str
) -> None:
    closed = free_port()
    (conf / "50-clamav.toml").write_text(
        f'servers = ["127.0.0.1:{closed}"]\non_error = "{policy}"\n'
    )
    result = run_try(conf, str(message))
    assert result.returncode == code, result.stderr
    [line] = [ln for ln in result.stdout.splitlines() if "clamav.on_message" in ln]
    assert line.lstrip().startswith("failed")
    assert f"cannot connect to clamd 127.0.0.1:{closed}" in line
    assert line.endswith(f"on_error = {policy} -> {then}")
    assert '"event": "plugin failed"' in result.stderr


def test_json_document(conf: Path, message: Path) -> None:
    (conf / "10-add_header.toml").write_text('name = "X-Tried"\nvalue = "json"\n')
    code, doc = run_json(conf, str(message), "--from", "zed@example.org", "--auth", "zed")
    assert code == doc["exit_status"] == 5
    assert doc["listener"] == "try" and doc["ingress"] == "smtp"
    client = {"ip": "127.0.0.1", "helo": "localhost", "tls": False, "auth_login": "zed"}
    assert doc["client"] == client
    assert doc["envelope_given"]["sender_from"] == "--from"
    assert [s["stage"] for s in doc["stages"]] == ["connect", "helo", "mail", "disconnect"]
    [sender_check] = calls(doc, "mail")
    assert sender_check["plugin"] == "sender_auth" and sender_check["answer"].startswith("reject")
    assert doc["result"]["outcome"] == "rejected" and doc["result"]["stage"] == "mail"
    assert doc["result"]["reply"].startswith("553 5.7.1")
    assert doc["envelope"] is None, "no transaction began"


def test_json_of_an_accepted_message(conf: Path, message: Path) -> None:
    (conf / "10-add_header.toml").write_text('name = "X-Tried"\nvalue = "json"\n')
    code, doc = run_json(conf, str(message), "--rcpt", "dave@example.org")
    assert code == 0
    names = [s["stage"] for s in doc["stages"]]
    assert names == ["connect", "helo", "mail", "rcpt", "data", "headers", "message",
                     "outcome", "disconnect"]  # fmt: skip
    [tagging] = calls(doc, "message")
    assert tagging["modifications"] == [
        {"action": "add_header", "text": "add header X-Tried: json", "name": "X-Tried",
         "value": "json"}
    ]  # fmt: skip
    assert isinstance(tagging["seconds"], float) and tagging["seconds"] < 1, "a duration in s"
    assert doc["result"]["outcome"] == "accepted"
    assert doc["result"]["relay"] == "127.0.0.1:25"
    assert doc["envelope"] == {"sender": "alice@example.com", "recipients": ["dave@example.org"]}
    assert [h["name"] for h in doc["headers"][:2]] == ["Authentication-Results", "Received"]
    assert doc["headers"][-1] == {"name": "X-Tried", "value": "json"}


def test_message_from_stdin(conf: Path) -> None:
    (conf / "10-add_header.toml").write_text('name = "X-Stdin"\nvalue = "1"\n')
    result = run_try(conf, "-", "--json", stdin=MESSAGE)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["message"] == "(stdin)"
    assert doc["envelope"]["recipients"] == ["bob@example.net", "carol@local.test"]
    assert {"name": "X-Stdin", "value": "1"} in doc["headers"]


def test_milter_ingress_leaves_relay_control_to_postfix(conf: Path, message: Path) -> None:
    (conf / "mailgate.toml").write_text("[relay_control]\nnetworks = []\n")
    code, doc = run_json(conf, str(message), "--ingress", "milter", "--client", "192.0.2.7")
    assert code == 0
    assert all(c["verdict"] is None for c in calls(doc, "rcpt"))
    first = [h["name"] for h in doc["headers"][:2]]
    assert first == ["Authentication-Results", "From"], "Postfix adds Received, not mailgate"


def test_bad_configuration_exits_1_naming_file_and_key(conf: Path, message: Path) -> None:
    (conf / "20-add_header.toml").write_text('nmae = "X"\n')
    result = run_try(conf, str(message))
    assert result.returncode == 1
    assert f"{conf}/20-add_header.toml: nmae: found an unknown key" in result.stderr
    assert result.stdout == ""


def test_usage_errors_exit_2(conf: Path, tmp_path: Path) -> None:
    assert run_try(conf, str(tmp_path / "missing.eml")).returncode == 2
    no_from = tmp_path / "no-from.eml"
    no_from.write_bytes(b"To: b@example.net\n\nhi\n")
    result = run_try(conf, str(no_from))
    assert result.returncode == 2
    assert "no --from and no From: header" in result.stderr
    assert run_try(conf, str(no_from), "--ingress", "lmtp").returncode == 2


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        (
            "--rcpt",
            "not an address",
            "--rcpt 'not an address': the listener would answer 501 5.5.4",
        ),
        ("--rcpt", "", "--rcpt '': the listener would answer 501 5.5.4"),
        ("--rcpt", "a@b>c", "--rcpt 'a@b>c': the listener would answer 501 5.5.4"),
        ("--from", "two words@example.com", "--from 'two words@example.com': the listener"),
        ("--client", "bogus", "--client 'bogus': not an IP address"),
        ("--client", "300.1.1.1", "--client '300.1.1.1': not an IP address"),
    ],
)
def test_an_envelope_the_listener_would_refuse_is_a_usage_error(
    conf: Path, message: Path, option: str, value: str, said: str
) -> None:
    result = run_try(conf, str(message), option, value)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"mailgate try: {said}" + result.stderr.partition(said)[2]
    assert said in result.stderr


def test_the_null_sender_and_an_ipv6_client_are_taken(conf: Path, message: Path) -> None:
    result = run_try(conf, str(message), "--from", "", "--client", "[2001:db8::1]")
    assert "sender <> (from --from)" in result.stdout
    # Taken as a client, and judged as one: an outside address may not relay.
    assert "554 5.7.1 Relay access denied (relay to example.net from 2001:db8::1)" in result.stdout


def test_bare_cr_is_refused_as_the_listener_refuses_it(conf: Path, tmp_path: Path) -> None:
    path = tmp_path / "cr.eml"
    path.write_bytes(MESSAGE + b"smuggled\r.\rMAIL FROM:<x@example.com>\n")
    result = run_try(conf, str(path))
    assert result.returncode == 5
    assert "Result: rejected at message: 554 5.6.0 Message refused: bare LF or CR" in result.stdout
    assert "(bare CR or LF on line 8 of the message)" in result.stdout
