"""Numbers and parameters are read strictly: each malformed one gets its standard reply, nothing
odd goes downstream, and nothing is logged as a traceback."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.syntax import ascii_number, ascii_port, valid_orcpt, valid_xtext
from tests.smtp.conftest import GatewayFactory
from tests.smtp.helpers import RecordingEgress, codes, raw_session


@pytest.mark.parametrize(
    ("mail", "code"),
    [
        ("MAIL FROM:<a@example.com> SIZE=²", 501),
        ("MAIL FROM:<a@example.com> SIZE=١٢", 501),
        ("MAIL FROM:<a@example.com> SIZE=" + "9" * 21, 501),
        ("MAIL FROM:<a@example.com> SIZE=" + "9" * 5000, 500),  # longer than a command line
        ("MAIL FROM:<a@example.com> SIZE=1 SIZE=2", 501),
        ("MAIL FROM:<a@example.com> SIZE=10 size=10", 501),
        ("MAIL FROM:<a@example.com> SMTPUTF8=yes", 501),
        ("MAIL FROM:<a@example.com> ENVID=a b", 555),  # "b" is read as an unknown keyword
        ("MAIL FROM:<a@example.com> ENVID=a+ZZ", 501),
        ("MAIL FROM:<a@example.com> ENVID=" + "x" * 101, 501),
        ("MAIL FROM:<a@example.com> SIZE=100", 250),
        ("MAIL FROM:<a@example.com> ENVID=" + "x" * 100, 250),
    ],
)
def test_mail_parameters(gateway_factory: GatewayFactory, mail: str, code: int) -> None:
    egress = RecordingEgress()
    gateway = gateway_factory(egress)
    transcript = raw_session(gateway.port, mail.encode() + b"\r\nQUIT\r\n")
    assert codes(transcript)[-2:] == [code, 221]
    assert egress.begun == (code == 250)


@pytest.mark.parametrize(
    ("rcpt", "code"),
    [
        ("RCPT TO:<b@example.net> ORCPT=b@example.net", 501),
        ("RCPT TO:<b@example.net> ORCPT=rfc822;b c", 555),
        ("RCPT TO:<b@example.net> ORCPT=rfc822;b+zz@example.net", 501),
        ("RCPT TO:<b@example.net> ORCPT=;b@example.net", 501),
        ("RCPT TO:<b@example.net> NOTIFY=SUCCESS,SUCCESS", 501),
        ("RCPT TO:<b@example.net> NOTIFY", 501),
        ("RCPT TO:<b@example.net> NOTIFY=NEVER NOTIFY=NEVER", 501),
        ("RCPT TO:<b@example.net> ORCPT=rfc822;b+2Bx@example.net", 250),
        ("RCPT TO:<b@example.net> NOTIFY=FAILURE,DELAY", 250),
    ],
)
def test_rcpt_parameters(gateway_factory: GatewayFactory, rcpt: str, code: int) -> None:
    egress = RecordingEgress()
    gateway = gateway_factory(egress)
    payload = b"MAIL FROM:<a@example.com>\r\n" + rcpt.encode() + b"\r\nQUIT\r\n"
    assert codes(raw_session(gateway.port, payload))[-2:] == [code, 221]
    assert egress.rcpts == (["b@example.net"] if code == 250 else [])


def test_parameters_after_a_plain_helo_are_refused(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(RecordingEgress())
    payload = (
        b"HELO client.test\r\nMAIL FROM:<a@example.com> SIZE=10\r\nMAIL FROM:<a@example.com>\r\n"
        b"RCPT TO:<b@example.net> NOTIFY=NEVER\r\nRCPT TO:<b@example.net>\r\nQUIT\r\n"
    )
    transcript = raw_session(gateway.port, payload, ehlo=False)
    assert codes(transcript)[1:] == [250, 555, 250, 555, 250, 221]


def test_invalid_utf8_in_an_smtputf8_address_is_refused(gateway_factory: GatewayFactory) -> None:
    egress = RecordingEgress()
    gateway = gateway_factory(egress)
    payload = (
        b"MAIL FROM:<j\xc3se@example.com> SMTPUTF8\r\n"
        b"MAIL FROM:<j\xc3\xb6se@example.com> SMTPUTF8\r\n"
        b"RCPT TO:<b\xff@example.net>\r\nRCPT TO:<b\xc3\xb6@example.net>\r\nQUIT\r\n"
    )
    assert codes(raw_session(gateway.port, payload))[-5:] == [553, 250, 553, 250, 221]
    assert egress.rcpts == ["bö@example.net"]


@given(st.text(max_size=30))
@settings(max_examples=300)
def test_numbers_are_ascii_digits_only(text: str) -> None:
    number = ascii_number(text)
    assert (number is not None) == (0 < len(text) <= 20 and all("0" <= c <= "9" for c in text))
    port = ascii_port(text)
    assert port is None or (0 <= port <= 65535 and str(port) == text.lstrip("0").rjust(1, "0"))


@given(st.text(max_size=30))
def test_xtext_and_orcpt_never_raise_and_agree(text: str) -> None:
    if valid_xtext(text):
        assert valid_orcpt(f"rfc822;{text}")
        assert all(0x21 <= ord(c) <= 0x7E and c != "=" for c in text)
    valid_orcpt(text)
