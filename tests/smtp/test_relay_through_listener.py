"""Client -> mailgate's SMTP listener -> real relay egress -> real smtp-sink."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from tests.peers.ports import free_port
from tests.peers.smtp_sink import SmtpSink, SmtpSinkFactory
from tests.smtp.conftest import GatewayFactory, relay_to
from tests.smtp.helpers import Gateway, codes, raw_session, untraced

MESSAGE = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hello\r\n\r\nHello\r\n.dot\r\n"


def test_ehlo_advertises_the_extensions(sink_gateway: Gateway) -> None:
    with smtplib.SMTP("127.0.0.1", sink_gateway.port) as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes"):
            assert client.has_extn(ext), ext
        assert client.esmtp_features["size"] == str(sink_gateway.settings.max_message_size.default)
        assert not client.has_extn("starttls")


def test_message_is_relayed_byte_for_byte(sink_gateway: Gateway, smtp_sink: SmtpSink) -> None:
    with smtplib.SMTP("127.0.0.1", sink_gateway.port) as client:
        refused = client.sendmail("a@example.com", ["b@example.net", "c@example.net"], MESSAGE)
        assert refused == {}
    (got,) = smtp_sink.messages()
    assert got.mail_from == "a@example.com"
    assert got.rcpts == ("b@example.net", "c@example.net")
    assert untraced(got.data) == MESSAGE


def test_final_reply_is_the_downstream_reply(sink_gateway: Gateway) -> None:
    with smtplib.SMTP("127.0.0.1", sink_gateway.port) as client:
        client.ehlo("client.test")
        client.mail("a@example.com")
        client.rcpt("b@example.net")
        code, text = client.data(MESSAGE)
    # smtp-sink's own answer to the end of data, passed through.
    assert (code, text) == (250, b"2.0.0 Ok")


def test_downstream_refusal_reaches_client_at_rcpt(
    gateway_factory: GatewayFactory, smtp_sink_factory: SmtpSinkFactory, tmp_path: Path
) -> None:
    sink = smtp_sink_factory(hard_reject=["RCPT"])
    gateway = gateway_factory(relay_to(sink.host, sink.port, tmp_path))
    with smtplib.SMTP("127.0.0.1", gateway.port) as client:
        client.ehlo("client.test")
        assert client.mail("a@example.com")[0] == 250
        code, text = client.rcpt("b@example.net")
        assert code == 500 and text.startswith(b"5.3.0")
        assert client.docmd("DATA")[0] == 503
    assert sink.messages() == []


def test_downstream_refusal_of_data_reaches_client(
    gateway_factory: GatewayFactory, smtp_sink_factory: SmtpSinkFactory, tmp_path: Path
) -> None:
    sink = smtp_sink_factory(soft_reject=["DATA"])
    gateway = gateway_factory(relay_to(sink.host, sink.port, tmp_path))
    with smtplib.SMTP("127.0.0.1", gateway.port) as client:
        client.ehlo("client.test")
        client.mail("a@example.com")
        client.rcpt("b@example.net")
        code, text = client.data(MESSAGE)
    assert code == 450 and text.startswith(b"4.3.0")
    assert sink.messages() == []


def test_dead_downstream_gives_a_temporary_failure(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    gateway = gateway_factory(relay_to("127.0.0.1", free_port(), tmp_path))
    with smtplib.SMTP("127.0.0.1", gateway.port) as client:
        client.ehlo("client.test")
        code, _ = client.mail("a@example.com")
    assert 400 <= code < 500


def test_bare_lf_in_data_is_refused_and_nothing_is_relayed(
    sink_gateway: Gateway, smtp_sink: SmtpSink
) -> None:
    payload = (
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
        + b"Subject: x\r\n\r\nbare\nline\r\n.\r\nQUIT\r\n"
    )
    transcript = raw_session(sink_gateway.port, payload)
    assert codes(transcript)[-5:] == [250, 250, 354, 554, 221]
    assert "554 5.6.0" in transcript
    assert smtp_sink.messages() == []


@pytest.mark.parametrize("separator", [b"\n", b"\r"], ids=["LF", "CR"])
def test_bare_line_endings_are_normalized_when_configured(
    gateway_factory: GatewayFactory, smtp_sink: SmtpSink, tmp_path: Path, separator: bytes
) -> None:
    gateway = gateway_factory(
        relay_to(smtp_sink.host, smtp_sink.port, tmp_path), bare_line_endings="normalize"
    )
    payload = (
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
        + b"Subject: x\r\n\r\none"
        + separator
        + b"two\r\n.\r\nQUIT\r\n"
    )
    transcript = raw_session(gateway.port, payload)
    assert codes(transcript)[-2:] == [250, 221]
    (got,) = smtp_sink.messages()
    assert untraced(got.data) == b"Subject: x\r\n\r\none\r\ntwo\r\n"


def test_pipelined_transactions_in_one_session(sink_gateway: Gateway, smtp_sink: SmtpSink) -> None:
    one = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    payload = (
        one + b"Subject: 1\r\n\r\none\r\n.\r\n" + one + b"Subject: 2\r\n\r\ntwo\r\n.\r\nQUIT\r\n"
    )
    transcript = raw_session(sink_gateway.port, payload)
    assert codes(transcript)[-9:] == [250, 250, 354, 250, 250, 250, 354, 250, 221]
    got = smtp_sink.messages()
    assert sorted(m.header("Subject") or "" for m in got) == ["1", "2"]


def test_dsn_parameters_are_passed_to_the_downstream(
    sink_gateway: Gateway, smtp_sink: SmtpSink
) -> None:
    with smtplib.SMTP("127.0.0.1", sink_gateway.port) as client:
        client.ehlo("client.test")
        assert client.has_extn("dsn")
        assert client.mail("a@example.com", ["RET=HDRS", "ENVID=abc", "BODY=8BITMIME"])[0] == 250
        assert (
            client.rcpt("b@example.net", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b@x"])[0] == 250
        )
        # As Postfix: "501 5.5.4 Error: Bad NOTIFY parameter syntax".
        assert client.rcpt("c@example.net", ["NOTIFY=NEVER,DELAY"])[0] == 501
        assert client.rcpt("c@example.net", ["X-UNKNOWN=1"])[0] == 555
        assert client.data(MESSAGE)[0] == 250
    (got,) = smtp_sink.messages()
    assert "RET=HDRS" in got.mail_params and "ENVID=abc" in got.mail_params
    assert got.rcpt_params == (("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b@x"),)
