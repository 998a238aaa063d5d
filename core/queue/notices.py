"""`Notifier`: the DSNs one delivery attempt calls for, built and ready to be queued.

After an attempt, each recipient's outcome may call for a report to the message's sender
(RFC 3461, 3464), one report per kind and attempt covering every recipient concerned:

- bounced (a 5xx, or still deferred after ``max_age``): a failure report, unless its
  ``NOTIFY=`` leaves out ``FAILURE`` (``NEVER``);
- deferred, for the first time since ``delay_warning`` seconds after acceptance (and that
  setting on): a delay report, if ``NOTIFY=`` asks for ``DELAY`` or is absent;
- delivered with ``NOTIFY=SUCCESS``: the next hop reports it when it offered DSN (it was
  given ``NOTIFY``); when it did not, a ``relayed`` report from here.

Nothing is ever sent to the null sender: a bounce of a bounce is dropped and logged. The
reports are queued as new messages (sender ``<>``) in the transaction that records the
outcomes (`mailgate.queue.records.record`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from mailgate.logging import get_logger
from mailgate.queue.dsn import (
    Action,
    Event,
    ReportedMessage,
    ReportedRecipient,
    ReportSettings,
    build_report,
    wants,
)
from mailgate.queue.records import NewMessage, Outcome, Queued, QueuedRecipient, new_queue_id
from mailgate.queue.schedule import Schedule
from mailgate.session import Address
from mailgate.store.schema import BOUNCED, DEFERRED, DELIVERED

log = get_logger("mailgate.queue")

_ACTIONS = {
    Event.FAILURE: Action.FAILED,
    Event.DELAY: Action.DELAYED,
    Event.SUCCESS: Action.RELAYED,
}


@dataclass(slots=True)
class Notices:
    """What an attempt leaves to record: the outcomes (``notified`` set where a report is
    queued), the reports to queue, and the time of a delay warning, if one is sent."""

    outcomes: list[Outcome]
    reports: list[NewMessage]
    delay_warned: float | None = None


class Notifier:
    """Decides and builds the reports of an attempt (see the module docstring)."""

    def __init__(self, schedule: Schedule, report: ReportSettings, node: str) -> None:
        self.schedule = schedule
        self.report = report
        self.node = node

    def settle(self, queued: Queued, outcomes: Sequence[Outcome], now: float) -> Notices:
        """The reports `outcomes` call for, and the outcomes marked accordingly."""
        due = {r.position: r for r in queued.recipients}
        addresses = [r.address for r in queued.recipients]
        kept: list[Outcome] = []
        groups: dict[Event, list[ReportedRecipient]] = {}
        for outcome in outcomes:
            recipient = due.get(outcome.position)
            event = None if recipient is None else self._event(queued, recipient, outcome, now)
            if event is None or recipient is None:
                kept.append(outcome)
                continue
            if not queued.sender.address:
                if event is Event.FAILURE:
                    log.warning(
                        "bounce of a bounce dropped: no DSN to the null sender",
                        queue_id=queued.id,
                        rcpt=recipient.address.address,
                        reply=outcome.reply,
                    )
                kept.append(outcome)
                continue
            times = self.schedule.times(queued.sender, addresses, recipient.address)
            groups.setdefault(event, []).append(
                ReportedRecipient(
                    address=recipient.address,
                    action=_ACTIONS[event],
                    status=outcome.status or _status_of(outcome),
                    diagnostic=outcome.diagnostic,
                    remote_mta=outcome.remote_mta,
                    last_attempt=now,
                    will_retry_until=(
                        queued.created + times.max_age if event is Event.DELAY else None
                    ),
                    expired=outcome.expired,
                )
            )
            kept.append(replace(outcome, notified=event.value))
        reports = [self._report(queued, event, rcpts, now) for event, rcpts in groups.items()]
        return Notices(kept, reports, now if Event.DELAY in groups else None)

    def _event(
        self, queued: Queued, recipient: QueuedRecipient, outcome: Outcome, now: float
    ) -> Event | None:
        params = recipient.address.params
        if outcome.state == BOUNCED:
            return Event.FAILURE if wants(params, Event.FAILURE) else None
        if outcome.state == DELIVERED:
            success = wants(params, Event.SUCCESS) and not queued.next_hop_dsn
            return Event.SUCCESS if success else None
        if outcome.state != DEFERRED or recipient.notified is not None:
            return None
        times = self.schedule.times(
            queued.sender, [r.address for r in queued.recipients], recipient.address
        )
        late = times.delay_warning > 0 and now - queued.created >= times.delay_warning
        return Event.DELAY if late and wants(params, Event.DELAY) else None

    def _report(
        self, queued: Queued, event: Event, rcpts: list[ReportedRecipient], now: float
    ) -> NewMessage:
        dsn_id = new_queue_id()
        message = ReportedMessage(
            queued.id, queued.sender, queued.created, queued.content, queued.header_size
        )
        content, header_size = build_report(message, rcpts, self.report, dsn_id=dsn_id, now=now)
        sender_params = [] if content.isascii() else ["BODY=8BITMIME"]
        rcpt = Address(queued.sender.address)
        if not rcpt.address.isascii():
            sender_params.append("SMTPUTF8")
        log.info(
            "DSN queued",
            queue_id=queued.id,
            dsn_id=dsn_id,
            action=_ACTIONS[event].value,
            to=queued.sender.address,
            rcpts=[r.address.address for r in rcpts],
        )
        return NewMessage.create(
            Address("", sender_params),
            [rcpt],
            content,
            header_size,
            self.node,
            transaction=f"dsn-{event.value}-{queued.id}",
            queue_id=dsn_id,
        )


def _status_of(outcome: Outcome) -> str:
    """An enhanced status from the reply code alone, when the reply carried none."""
    first = outcome.reply[:1]
    return f"{first}.0.0" if first in ("2", "4", "5") else "5.0.0"
