"""What option negotiation settled for one milter connection, the same type for both directions.

The listener (mailgate as the filter, `mailgate.milter.negotiation`) and the bridge (mailgate as
the MTA, `mailgate.plugins.milter.client`) each reach a `Negotiated` in their own way; from then
on both ask it the same questions for every frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mailgate.milter.protocol import NO_REPLY, Action, Command, MacroStage, Step

_NOT_SENT_WITH: dict[Command, Step] = {
    Command.CONNECT: Step.NOCONNECT,
    Command.HELO: Step.NOHELO,
    Command.MAIL: Step.NOMAIL,
    Command.RCPT: Step.NORCPT,
    Command.DATA: Step.NODATA,
    Command.HEADER: Step.NOHDRS,
    Command.EOH: Step.NOEOH,
    Command.BODY: Step.NOBODY,
    Command.UNKNOWN: Step.NOUNKNOWN,
}
"""For each command the filter can decline, the flag that says it does not want it."""

_DATA_VERSION = 4
"""SMFIC_DATA exists from milter protocol 4 on."""


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What the MTA and the filter agreed on for one connection."""

    version: int
    actions: Action
    protocol: Step
    macro_lists: Mapping[MacroStage, tuple[str, ...]] = field(default_factory=dict, hash=False)
    """The macros the filter asked for at each stage (SMFIF_SETSYMLIST), names as on the wire."""
    # Worked out once from the flags: checking enum flags for every frame is a measurable cost
    # per message.
    unwanted: frozenset[Command] = field(init=False, repr=False, compare=False)
    """The commands the MTA does not send (``NO*`` flags; DATA before protocol 4)."""
    answered: frozenset[Command] = field(init=False, repr=False, compare=False)
    """The commands the MTA waits for a reply to (no ``NR_*`` flag; always end of message)."""
    action_bits: int = field(init=False, repr=False, compare=False)
    """`actions` as a plain int (cheaper to test than the flag)."""
    answered_codes: frozenset[bytes] = field(init=False, repr=False, compare=False)
    """`answered` as the frames' wire codes."""
    leading_space: bool = field(init=False, repr=False, compare=False)
    """True if header values keep their leading space, both ways."""
    withheld: frozenset[str] = field(init=False, repr=False, compare=False)
    """The parts of the message the MTA does not send (``"headers"``, ``"body"``)."""

    def __post_init__(self) -> None:
        unwanted = {cmd for cmd, flag in _NOT_SENT_WITH.items() if self.protocol & flag}
        if self.version < _DATA_VERSION:
            unwanted.add(Command.DATA)
        object.__setattr__(self, "unwanted", frozenset(unwanted))
        answered = {cmd for cmd, flag in NO_REPLY.items() if not self.protocol & flag}
        object.__setattr__(self, "answered", frozenset(answered | {Command.BODYEOB}))
        object.__setattr__(self, "action_bits", int(self.actions))
        object.__setattr__(self, "answered_codes", frozenset(c.value for c in self.answered))
        object.__setattr__(self, "leading_space", bool(self.protocol & Step.HDR_LEADSPC))
        withheld = {"headers"} if self.protocol & Step.NOHDRS else set()
        if self.protocol & Step.NOBODY:
            withheld.add("body")
        object.__setattr__(self, "withheld", frozenset(withheld))

    def sends(self, command: Command) -> bool:
        """True if the MTA sends `command` at all."""
        return command not in self.unwanted

    def replies_to(self, command: Command) -> bool:
        """True if the MTA waits for the filter's reply to `command`."""
        return command in self.answered
