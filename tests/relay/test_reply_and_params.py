"""Parsing downstream replies and choosing the ESMTP parameters passed on."""

from __future__ import annotations

from typing import Any

import pytest
from aiosmtplib.response import SMTPResponse

from mailgate.config import Dynamic
from mailgate.relay.params import mail_params, rcpt_params, with_size
from mailgate.relay.reply import reply_from_response
from mailgate.relay.settings import RelaySettings


def test_multiline_reply_keeps_code_status_and_every_line() -> None:
    reply = reply_from_response(SMTPResponse(550, "5.7.1 first line\n5.7.1 second line"))
    assert (reply.code, reply.status, reply.text) == (550, "5.7.1", "first line\nsecond line")
    assert reply.smtp_reply() == "550-5.7.1 first line\r\n550 5.7.1 second line"


def test_reply_without_enhanced_status_is_kept_as_is() -> None:
    reply = reply_from_response(SMTPResponse(250, "Ok"))
    assert (reply.code, reply.status, reply.text) == (250, "", "Ok")


def test_only_advertised_parameters_are_passed_on() -> None:
    ext = {"size": "1000", "8bitmime": "", "dsn": ""}
    given = ["SIZE=10", "BODY=8BITMIME", "SMTPUTF8", "AUTH=<>", "RET=HDRS", "BODY=BINARYMIME"]
    assert mail_params(given, ext) == ["SIZE=10", "BODY=8BITMIME", "RET=HDRS"]
    assert rcpt_params(["NOTIFY=NEVER", "X=1"], ext) == ["NOTIFY=NEVER"]
    assert rcpt_params(["NOTIFY=NEVER"], {}) == []


def test_binarymime_needs_chunking_too() -> None:
    assert mail_params(["BODY=BINARYMIME"], {"binarymime": "", "chunking": ""}) == [
        "BODY=BINARYMIME"
    ]
    assert mail_params(["BODY=BINARYMIME"], {"binarymime": ""}) == []


def test_size_is_replaced_by_the_real_size() -> None:
    assert with_size(["SIZE=10", "BODY=8BITMIME"], 2048) == ["BODY=8BITMIME", "SIZE=2048"]


def test_address_is_split_into_host_and_port() -> None:
    relay = RelaySettings(address=Dynamic.fixed("[::1]:2525"))
    assert (relay.host, relay.port) == ("::1", 2525)
    assert RelaySettings(address=Dynamic.fixed("mx.example:25")).host == "mx.example"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"address": "nohost"}, "address must be HOST:PORT or [IPV6]:PORT, not 'nohost'"),
        ({"address": "mx.example:0"}, "address: a port from 1 to 65535"),
        ({"starttls": "maybe"}, "starttls: expected one of opportunistic, require, never"),
        ({"chunk_size": 10}, "chunk_size: expected at least 1024 bytes"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        RelaySettings(**bad)
    assert str(err.value).startswith(message)
