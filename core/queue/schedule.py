"""`Schedule`: the retry times of one queued recipient, from ``[queue]``'s settings.

``min_backoff``, ``max_backoff``, ``max_age`` and ``delay_warning`` may be rules
(`mailgate.config.Dynamic`). In the queue there is no client session: the rules see the
queued message's envelope, ``sender``, ``rcpt`` (the recipient in question), ``rcpts`` and
``size`` (from ``SIZE=``, else 0); the client facts are empty.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.config.dynamic import Dynamic
from mailgate.expressions import current_recipient
from mailgate.queue.settings import QueueSettings
from mailgate.session import Address, Session, Transaction

_NO_CLIENT = Session(client_ip="", listener="queue", ingress="queue")


@dataclass(frozen=True, slots=True)
class RecipientTimes:
    """One recipient's retry settings, evaluated."""

    min_backoff: float
    max_backoff: float
    max_age: float
    delay_warning: float
    """0: no delay warning."""

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt (1, 2, ...)."""
        return float(min(self.max_backoff, self.min_backoff * 2 ** min(max(attempts - 1, 0), 32)))


class Schedule:
    """Evaluates the retry settings for a recipient of a queued message."""

    def __init__(self, settings: QueueSettings) -> None:
        self.settings = settings
        self._settings = (
            settings.min_backoff,
            settings.max_backoff,
            settings.max_age,
            settings.delay_warning,
        )
        self._fixed = (
            RecipientTimes(*(s.default for s in self._settings))
            if all(s.is_fixed for s in self._settings)
            else None
        )

    def times(
        self, sender: Address, recipients: list[Address], recipient: Address
    ) -> RecipientTimes:
        """The settings for `recipient` of the message from `sender` to `recipients`."""
        if self._fixed is not None:
            return self._fixed
        transaction = Transaction(sender, recipients)
        token = current_recipient.set(recipient)
        try:
            return RecipientTimes(*(_value(s, transaction) for s in self._settings))
        finally:
            current_recipient.reset(token)


def _value(setting: Dynamic[float], transaction: Transaction) -> float:
    return setting.value(_NO_CLIENT, transaction)
