"""Greylisting's rules, apart from where the state is kept: the triplet and the decision.

A triplet is (client network, sender, recipient). Its first attempt is refused; a retry at
least `delay` seconds later, and no more than `retry_window` seconds after the first attempt,
passes, and the triplet then passes at once for `pass_lifetime` seconds after its last message
(each message renews it). A retry after the window starts the wait afresh, as a new triplet.

Senders are compared as Postgrey compares them, so that addresses that change with every
message do not greylist every message: lower-cased, a BATV tag (``prvs=tag=user@``) taken off,
and each run of digits standing alone in the local part (VERP bounce addresses, list numbers)
replaced by ``#``.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

from mailgate.plugins.limits.settings import network_of

_BATV = re.compile(r"^prvs=[^=]*=", re.IGNORECASE)
_NUMBERS = re.compile(r"\b\d+\b")


@dataclass(frozen=True, slots=True)
class Triplet:
    """What greylisting remembers: who sent (network), from whom, to whom."""

    client: str
    sender: str
    recipient: str

    @classmethod
    def of(
        cls, client_ip: str, sender: str, recipient: str, ipv4_prefix: int, ipv6_prefix: int
    ) -> Triplet:
        """The triplet of one attempt: the client's network, the normalised sender, the
        lower-cased recipient."""
        network = network_of(client_ip, ipv4_prefix, ipv6_prefix)
        return cls(network, normalise_sender(sender), recipient.lower())

    @property
    def key(self) -> str:
        """A fixed-size key for the triplet (sha256, hex)."""
        raw = "\0".join((self.client, self.sender, self.recipient)).encode()
        return hashlib.sha256(raw).hexdigest()


def normalise_sender(sender: str) -> str:
    """The sender as greylisting compares it (see the module docstring)."""
    local, at, domain = sender.lower().rpartition("@")
    if not at:
        return sender.lower()
    local = _BATV.sub("", local)
    return f"{_NUMBERS.sub('#', local)}@{domain}"


@dataclass(frozen=True, slots=True)
class Timing:
    """The greylisting delays, in seconds."""

    delay: float = 300.0
    retry_window: float = 4 * 3600.0
    pass_lifetime: float = 35 * 86400.0


@dataclass(slots=True)
class TripletState:
    """What is stored per triplet."""

    first_seen: float
    last_seen: float
    passed: float | None = None
    """When it first got through; None while it is still greylisted."""
    attempts: int = 0
    """Attempts refused since `first_seen`."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one attempt, and the state to store after it."""

    allowed: bool
    wait: int
    """Seconds until a retry can pass (0 when allowed)."""
    state: TripletState


def decide(state: TripletState | None, now: float, timing: Timing) -> Decision:
    """Greylisting's rule for one attempt of a triplet whose stored state is `state`."""
    if state is not None and state.passed is not None:
        if now - state.last_seen <= timing.pass_lifetime:
            return Decision(True, 0, TripletState(state.first_seen, now, state.passed, 0))
        state = None  # passed long ago and not seen since: as new
    if state is not None and now - state.first_seen > timing.retry_window:
        state = None  # the retry came too late: the wait starts again
    if state is None:
        return Decision(False, _ceil(timing.delay), TripletState(now, now, None, 1))
    waited = max(0.0, now - state.first_seen)  # another node's clock may be ahead
    if waited >= timing.delay:
        return Decision(True, 0, TripletState(state.first_seen, now, now, state.attempts))
    fresh = TripletState(state.first_seen, now, None, state.attempts + 1)
    return Decision(False, _ceil(timing.delay - waited), fresh)


def whitelisted(passes: int, last_seen: float, now: float, threshold: int, lifetime: float) -> bool:
    """True when a client network got through `threshold` times (0: never) and was seen
    within `lifetime` seconds."""
    return threshold > 0 and passes >= threshold and now - last_seen <= lifetime


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))
