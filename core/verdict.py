"""Verdicts: what a decision hook answers instead of `None` ("go on")."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class VerdictKind(enum.Enum):
    """The kinds of answer a plugin can give; each maps to an SMTP reply and a milter reply."""

    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"
    QUARANTINE = "quarantine"
    DISCONNECT = "disconnect"


_DEFAULTS: dict[VerdictKind, tuple[int, str, str]] = {
    VerdictKind.ACCEPT: (250, "2.0.0", "OK"),
    VerdictKind.REJECT: (550, "5.7.1", "Message rejected"),
    VerdictKind.TEMPFAIL: (451, "4.7.1", "Temporary failure, try again later"),
    VerdictKind.DISCARD: (250, "2.0.0", "OK"),
    VerdictKind.QUARANTINE: (250, "2.0.0", "OK"),
    VerdictKind.DISCONNECT: (421, "4.7.0", "Closing connection"),
}


def format_reply(code: int, status: str, text: str) -> str:
    """An SMTP reply as sent, without the final CRLF: ``"550 5.7.1 No"``, or for a `text` of
    several lines (separated by ``\\n``) one line each, all but the last with ``-`` after the code
    (RFC 5321 4.2.1), every line carrying the enhanced status."""
    prefix = f"{status} " if status else ""
    lines = text.split("\n")
    out = [f"{code}-{prefix}{line}".rstrip() for line in lines[:-1]]
    out.append(f"{code} {prefix}{lines[-1]}".rstrip())
    return "\r\n".join(out)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision: accept, reject, tempfail, discard, quarantine or disconnect.

    `code`, `status` (the RFC 3463 enhanced status code) and `text` are what the SMTP client
    sees; a `text` of several lines, separated by ``\\n``, becomes a multi-line reply. `reason`
    is for logs and quarantine records and is never sent to the client. Build one with the
    class methods: ``Verdict.reject(550, "5.7.1", "No thanks")``.
    """

    kind: VerdictKind
    code: int
    status: str
    text: str
    reason: str = ""
    plugin: str = field(default="", compare=False)
    """The plugin that gave this verdict; the pipeline fills it in, for the log."""

    def __post_init__(self) -> None:
        first = str(self.code)[:1]
        expected = {
            VerdictKind.REJECT: "5",
            VerdictKind.TEMPFAIL: "4",
            VerdictKind.DISCONNECT: "4",
        }.get(self.kind, "2")
        if len(str(self.code)) != 3 or first != expected:
            raise ValueError(f"{self.kind.value} needs a {expected}xx code, got {self.code}")
        if self.status and self.status[:1] != first:
            raise ValueError(f"enhanced status {self.status} does not match code {self.code}")
        if "\r" in self.text:
            raise ValueError("verdict text: separate lines with \\n, not CR")

    @classmethod
    def _make(
        cls, kind: VerdictKind, code: int | None, status: str | None, text: str | None, reason: str
    ) -> Verdict:
        d_code, d_status, d_text = _DEFAULTS[kind]
        return cls(
            kind,
            d_code if code is None else code,
            d_status if status is None else status,
            d_text if text is None else text,
            reason,
        )

    @classmethod
    def accept(cls, text: str | None = None, *, reason: str = "") -> Verdict:
        """Accept now: later plugins of the same stage are not asked."""
        return cls._make(VerdictKind.ACCEPT, None, None, text, reason)

    @classmethod
    def reject(
        cls,
        code: int = 550,
        status: str = "5.7.1",
        text: str | None = None,
        *,
        reason: str = "",
    ) -> Verdict:
        """Refuse permanently (5xx)."""
        return cls._make(VerdictKind.REJECT, code, status, text, reason)

    @classmethod
    def tempfail(
        cls,
        code: int = 451,
        status: str = "4.7.1",
        text: str | None = None,
        *,
        reason: str = "",
    ) -> Verdict:
        """Refuse for now (4xx): the client should try again later."""
        return cls._make(VerdictKind.TEMPFAIL, code, status, text, reason)

    @classmethod
    def discard(cls, *, reason: str = "") -> Verdict:
        """Say 250 to the client and deliver nothing."""
        return cls._make(VerdictKind.DISCARD, None, None, None, reason)

    @classmethod
    def quarantine(cls, *, reason: str = "") -> Verdict:
        """Say 250 and hold the message for an administrator instead of delivering it."""
        return cls._make(VerdictKind.QUARANTINE, None, None, None, reason)

    @classmethod
    def disconnect(cls, text: str | None = None, *, reason: str = "") -> Verdict:
        """Answer 421 and close the connection."""
        return cls._make(VerdictKind.DISCONNECT, None, None, text, reason)

    @property
    def is_refusal(self) -> bool:
        """True for reject, tempfail and disconnect: the message is not taken."""
        return self.kind in (VerdictKind.REJECT, VerdictKind.TEMPFAIL, VerdictKind.DISCONNECT)

    def smtp_reply(self) -> str:
        """The reply as sent, e.g. ``"550 5.7.1 No thanks"`` (lines joined by CRLF)."""
        return format_reply(self.code, self.status, self.text)


def aborted(reason: str) -> Verdict:
    """The verdict `on_outcome` gets for a transaction that ended without a final answer
    (RSET, QUIT, a lost connection, the MTA's ABORT): a tempfail whose `reason` says why."""
    return Verdict.tempfail(451, "4.3.0", "Transaction aborted", reason=reason)
