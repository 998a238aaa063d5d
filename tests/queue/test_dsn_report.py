"""The DSN builder (`mailgate.queue.dsn.build_report`) against Python's email package: any
recipients, replies, envelope parameters and message give a well-formed RFC 3464 report."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailgate.queue.dsn import (
    Action,
    Event,
    ReportedMessage,
    ReportedRecipient,
    ReportSettings,
    build_report,
    utf8_addr_xtext,
    wants,
    xtext_decode,
)
from mailgate.session import Address
from tests.queue.test_dsn import field_blocks

_ATOM = st.text("abcdefghijklmnopqrstuvwxyz0123456789-+=.", min_size=1, max_size=20)
_ADDRESS = st.builds(
    lambda local, domain: f"{local}@{domain}.example",
    _ATOM,
    st.from_regex(r"[a-z]{1,12}", fullmatch=True),
)
_XTEXT = st.from_regex(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2}){1,40}", fullmatch=True)
_STATUS = st.from_regex(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True)
_LINE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=120)


@st.composite
def recipients(draw: st.DrawFn) -> ReportedRecipient:
    params = []
    if draw(st.booleans()):
        params.append(f"ORCPT=rfc822;{draw(_XTEXT)}")
    return ReportedRecipient(
        address=Address(draw(_ADDRESS), params),
        action=draw(st.sampled_from(list(Action))),
        status=draw(_STATUS),
        diagnostic=draw(st.sampled_from(["smtp", "X-mailgate"]))
        + "; "
        + draw(st.text(max_size=600)),
        remote_mta=draw(st.sampled_from(["", "mx.example.org", "192.0.2.1"])),
        last_attempt=draw(st.floats(1e9, 4e9)),
        will_retry_until=draw(st.none() | st.floats(1e9, 4e9)),
        expired=draw(st.booleans()),
    )


@st.composite
def messages(draw: st.DrawFn) -> ReportedMessage:
    headers = [f"X-H{i}: {draw(_LINE)}" for i in range(draw(st.integers(0, 5)))]
    head = ("\r\n".join(["Message-ID: <m@example.net>", *headers]) + "\r\n\r\n").encode()
    body_lines = draw(
        st.lists(
            st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
            max_size=20,
        )
    )
    body = b"".join(line + b"\r\n" for line in body_lines)
    params = []
    if draw(st.booleans()):
        params.append(f"ENVID={draw(_XTEXT)}")
    if ret := draw(st.sampled_from(["", "FULL", "HDRS"])):
        params.append(f"RET={ret}")
    return ReportedMessage(
        "18C3F2A9B10E5D2A7C4F1",
        Address(draw(_ADDRESS), params),
        draw(st.floats(1e9, 4e9)),
        head + body,
        len(head),
    )


def _header_safe(text: str) -> bool:
    """Whether `text` survives as a header field's value: printable ASCII, not blank, no
    spaces at its ends."""
    return text.isascii() and text.isprintable() and text == text.strip() != ""


_SPACE_ORCPT = ReportedRecipient(
    Address("0@a.example", ["ORCPT=rfc822;+20"]), Action.FAILED, "2.0.0", "smtp; ", "", 1e9
)
"""A recipient whose ORCPT decodes to a space: its report is message/global-delivery-status."""


@settings(max_examples=150, deadline=None)
@given(
    messages(),
    st.lists(recipients(), min_size=1, max_size=5),
    st.integers(0, 3000),
    st.sampled_from(["full", "headers"]),
)
@example(  # hypothesis found it: the global form's blocks must be read as such
    ReportedMessage("Q1", Address("0@a.example"), 1e9, b"Message-ID: <m@x.net>\r\n\r\n", 25),
    [ReportedRecipient(Address("0@a.example"), Action.FAILED, "2.0.0", "smtp; "), _SPACE_ORCPT],
    0,
    "full",
)
def test_any_report_parses_as_rfc_3464(
    message: ReportedMessage, rcpts: list[ReportedRecipient], cap: int, default: str
) -> None:
    report_settings = ReportSettings("mailgate.test", default_return=default, max_return=cap)
    data, header_size = build_report(message, rcpts, report_settings, dsn_id="DSN1", now=2e9)
    assert data[header_size - 4 : header_size] == b"\r\n\r\n"
    ours = b"".join(data.split(b"\r\n--DSN1.")[:3])  # all but the returned message
    lines = ours.split(b"\r\n")
    assert all(b"\r" not in line and b"\n" not in line for line in lines)
    assert max(len(line) for line in lines) <= 998
    report = message_from_bytes(data, policy=policy.default)
    assert isinstance(report, EmailMessage)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["To"].addresses[0].addr_spec == message.sender.address
    assert not report.defects
    human, status, returned = report.iter_parts()
    assert human.get_content_type() == "text/plain"
    odd_orcpt = any(
        not _header_safe(xtext_decode(p[13:]))
        for r in rcpts
        for p in r.address.params
        if p.startswith("ORCPT=rfc822;")
    )
    # An rfc822 ORCPT whose decoded form would not survive a header goes as RFC 6533 utf-8.
    assert status.get_content_type() == (
        "message/global-delivery-status" if odd_orcpt else "message/delivery-status"
    )
    per_message, *blocks = field_blocks(status)
    assert per_message["Reporting-MTA"] == "dns; mailgate.test"
    envid = next((p[6:] for p in message.sender.params if p.startswith("ENVID=")), None)
    decoded = envid and xtext_decode(envid)
    expected = decoded if decoded and decoded == decoded.strip() else envid
    assert per_message.get("Original-Envelope-Id") == expected
    assert len(blocks) == len(rcpts)
    for block, rcpt in zip(blocks, rcpts, strict=True):
        assert block["Final-Recipient"] == f"rfc822; {rcpt.address.address}"
        assert block["Action"] == rcpt.action.value
        assert block["Status"] == rcpt.status
        kind, _, text = rcpt.diagnostic.partition("; ")
        diagnostic = " ".join(str(block["Diagnostic-Code"]).split())
        assert diagnostic.startswith(f"{kind};")
        cleaned = "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))
        assert diagnostic == " ".join(f"{kind}; {cleaned[:900]}".split())
        orcpt = next((p[6:] for p in rcpt.address.params if p.startswith("ORCPT=")), None)
        if orcpt is not None:
            decoded = xtext_decode(orcpt[7:])
            if _header_safe(decoded):
                assert block["Original-Recipient"] == f"rfc822; {decoded}"
            else:  # what a header field cannot carry stays encoded (RFC 6533 utf-8-addr-xtext)
                assert block["Original-Recipient"].startswith("utf-8; ")
        assert ("Remote-MTA" in block) == bool(rcpt.remote_mta)
        assert ("Original-Recipient" in block) == (orcpt is not None)
    ret = next((p[4:] for p in message.sender.params if p.startswith("RET=")), default.upper())
    full = rcpts[0].action is Action.FAILED and ret in ("FULL",) and len(message.content) <= cap
    if full:
        assert returned.get_content_type() == "message/rfc822"
        assert message.content in data
    else:
        assert returned.get_content_type() == "text/rfc822-headers"
        assert message.content[: message.header_size - 2] in data


def test_notify_words_choose_the_events() -> None:
    assert wants([], Event.FAILURE) and wants([], Event.DELAY) and not wants([], Event.SUCCESS)
    assert not any(wants(["NOTIFY=NEVER"], e) for e in Event)
    assert wants(["notify=success,delay"], Event.SUCCESS)
    assert not wants(["NOTIFY=SUCCESS,DELAY"], Event.FAILURE)
    assert utf8_addr_xtext("jöe+x@example.org") == "j\\x{F6}e\\x{2B}x@example.org"


def test_an_internationalized_recipient_gets_a_global_delivery_status() -> None:
    content = "Subject: grüße\r\n\r\nbody\r\n".encode()
    message = ReportedMessage(
        "Q1", Address("jöe@example.net", ["RET=FULL"]), 1e9, content, content.index(b"body")
    )
    rcpt = ReportedRecipient(Address("zoë@example.org"), Action.FAILED, "5.1.1", "smtp; 550 no")
    data, _ = build_report(message, [rcpt], ReportSettings("mx.test"), dsn_id="D1", now=1e9)
    report = message_from_bytes(data, policy=policy.default)
    assert isinstance(report, EmailMessage)
    assert report["Content-Transfer-Encoding"] == "8bit"  # the returned message is 8-bit
    _, status, returned = report.iter_parts()
    assert status.get_content_type() == "message/global-delivery-status"
    assert "Final-Recipient: utf-8; zo\\x{EB}@example.org" in data.decode()
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert content in data
