"""XFORWARD commands: attributes, xtext, splitting (the wire behaviour is in tests/smtp)."""

from __future__ import annotations

from mailgate.relay.xforward import commands, xclient_command, xtext
from mailgate.session import Address, Session, Transaction

POSTFIX_OFFER = "NAME ADDR PROTO HELO SOURCE PORT IDENT"


def test_xtext_encodes_plus_equals_space_controls_and_non_ascii() -> None:
    assert xtext("a+b=c d\ré") == "a+2Bb+3Dc+20d+0D+C3+A9"
    assert xtext("[UNAVAILABLE]") == "[UNAVAILABLE]"


def test_commands_carry_the_original_client_and_only_offered_attributes() -> None:
    session = Session("192.0.2.1", 4711, helo="client.test")
    tx = Transaction(Address("a@example.com"), id="t1-2", notes={"protocol": "ESMTPS"})
    assert commands(POSTFIX_OFFER, session, tx) == [
        "XFORWARD NAME=[UNAVAILABLE] ADDR=192.0.2.1 PORT=4711 PROTO=ESMTPS HELO=client.test"
        " IDENT=t1-2"
    ]
    assert commands("ADDR HELO", session, tx) == ["XFORWARD ADDR=192.0.2.1 HELO=client.test"]


def test_ipv6_address_is_prefixed_and_long_lines_are_split() -> None:
    session = Session("2001:db8::1", 25, helo="é" * 80, client_name="mx.client.test")
    tx = Transaction(Address(""))
    lines = commands(POSTFIX_OFFER, session, tx)
    assert lines[0].startswith("XFORWARD NAME=mx.client.test ADDR=IPv6:2001:db8::1 PORT=25 ")
    assert lines[1:] == ["XFORWARD HELO=" + "+C3+A9" * 80, f"XFORWARD IDENT={tx.id}"]
    # Postfix's smtpd takes command lines of up to line_length_limit (2048) bytes.
    assert all(len(line) <= 2048 for line in lines)


def test_xclient_is_one_command_with_the_offered_attributes() -> None:
    session = Session("192.0.2.1", 4711, helo="client test", auth_login="alice")
    tx = Transaction(Address("a@example.com"), notes={"protocol": "ESMTPSA"})
    offer = "NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT"
    assert xclient_command(offer, session, tx) == (
        "XCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.1 PORT=4711 PROTO=ESMTP HELO=client+20test"
        " LOGIN=alice"
    )
    plain = Transaction(Address(""), notes={"protocol": "SMTP"})
    assert xclient_command("ADDR PROTO LOGIN", Session("2001:db8::1"), plain) == (
        "XCLIENT ADDR=IPv6:2001:db8::1 PROTO=SMTP LOGIN=[UNAVAILABLE]"
    )
