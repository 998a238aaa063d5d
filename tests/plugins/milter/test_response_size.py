"""``max_response_size``: a bound on what a milter may send for one message, at its edge."""

from __future__ import annotations

import smtplib

import pytest

from mailgate import Session, Transaction, hookimpl
from mailgate.pipeline import EnabledPlugin
from tests.peers.smtp_sink import SmtpSink
from tests.plugins.milter.conftest import ActionMilterFactory, BridgeFactory, milter


class ResponseSizes:
    """Keeps the bytes the milter sent for each message (its result's ``response_bytes``)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    @hookimpl
    def on_message(self, session: Session, transaction: Transaction) -> None:
        self.sizes.append(transaction.results["big"].details["response_bytes"])


def big(size: int) -> bytes:
    return f"From: a@example.com\r\nSubject: big {size}\r\n\r\nhello\r\n".encode()


def send(port: int, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("a@example.com", ["b@example.com"], data)


@pytest.mark.parametrize("header_bytes", [100, 60_000])
def test_a_milter_sending_one_byte_more_than_the_bound_gets_the_failure_policy(
    action_milter_factory: ActionMilterFactory,
    bridge_factory: BridgeFactory,
    smtp_sink: SmtpSink,
    header_bytes: int,
) -> None:
    address = action_milter_factory("A")
    sizes = ResponseSizes()
    measure = bridge_factory(
        milter(address, name="big"), EnabledPlugin("sizes", sizes, timeout=5.0)
    )
    send(measure.port, big(header_bytes))
    send(measure.port, big(header_bytes))
    [exact, again] = sizes.sizes
    assert exact == again > header_bytes  # the same every time: what the milter sends
    smtp_sink.wait_for_messages(2)
    smtp_sink.clear()

    # Exactly at the bound: accepted, the milter's header is there.
    at_edge = bridge_factory(
        milter(address, name="big", max_response_size=exact, on_failure="reject")
    )
    send(at_edge.port, big(header_bytes))
    [tx] = smtp_sink.wait_for_messages(1)
    assert len(tx.header("X-A-Big") or "") == header_bytes

    # One byte less room: the milter's failure policy, and nothing delivered.
    smtp_sink.clear()
    over = bridge_factory(
        milter(address, name="big", max_response_size=exact - 1, on_failure="reject")
    )
    client = smtplib.SMTP("127.0.0.1", over.port, timeout=30)
    with client, pytest.raises(smtplib.SMTPDataError) as err:
        client.sendmail("a@example.com", ["b@example.com"], big(header_bytes))
    assert (err.value.smtp_code, err.value.smtp_error) == (554, b"5.7.1 Service unavailable")
    assert smtp_sink.messages() == []


def test_the_bound_is_per_message(
    action_milter_factory: ActionMilterFactory, bridge_factory: BridgeFactory, smtp_sink: SmtpSink
) -> None:
    """Two messages in one session, each under the bound, together over it: both pass."""
    address = action_milter_factory("A")
    sizes = ResponseSizes()
    gw = bridge_factory(milter(address, name="big"), EnabledPlugin("sizes", sizes, timeout=5.0))
    send(gw.port, big(1000))
    [one] = sizes.sizes
    smtp_sink.wait_for_messages(1)
    smtp_sink.clear()
    bounded = bridge_factory(
        milter(address, name="big", max_response_size=one + 10, on_failure="reject")
    )
    with smtplib.SMTP("127.0.0.1", bounded.port, timeout=30) as client:
        for _ in range(3):
            client.sendmail("a@example.com", ["b@example.com"], big(1000))
    assert len(smtp_sink.wait_for_messages(3)) == 3
