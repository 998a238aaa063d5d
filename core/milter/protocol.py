"""Milter protocol constants (sendmail libmilter, versions 2 to 6), with what each one means.

Every frame on the wire is a 4-byte big-endian length (counting the code byte and the data),
one code byte, then the data. Strings in the data are NUL-terminated bytes, 8-bit clean.
"""

from __future__ import annotations

import enum

VERSION_2 = 2
"""The old protocol (qpsmtpd, sendmail 8.13): no DATA step, no no-reply flags, no macro lists."""
VERSION_6 = 6
"""The current protocol (sendmail 8.14+, Postfix 2.6+): every flag below."""
MIN_VERSION = VERSION_2
MAX_VERSION = VERSION_6

DEFAULT_MAX_FRAME = (1 << 20) + 1024
"""Frames longer than this are refused: room for a 1 MiB body chunk (SMFIP_MDS_1M) and slack."""

BODY_CHUNK = 65535
"""The largest body chunk libmilter sends or accepts without an MDS flag (MILTER_CHUNK_SIZE)."""


class Command(bytes, enum.Enum):
    """Codes of the frames the MTA sends to the filter (SMFIC_*)."""

    ABORT = b"A"
    """Forget the current message; the connection (and its session) goes on."""
    BODY = b"B"
    """A chunk of the body (CRLF lines, no dot stuffing)."""
    CONNECT = b"C"
    """Connection info: client host name, address family, port and address."""
    MACRO = b"D"
    """Macro values for the command code that follows (name/value pairs)."""
    BODYEOB = b"E"
    """End of the message: the filter now answers with its modifications and its verdict."""
    HELO = b"H"
    """The HELO/EHLO name."""
    QUIT_NC = b"K"
    """End of this SMTP session, but keep the milter connection for a new one (v6)."""
    HEADER = b"L"
    """One header: name and value."""
    MAIL = b"M"
    """MAIL FROM: the sender in angle brackets, then its ESMTP parameters."""
    EOH = b"N"
    """End of the header block."""
    OPTNEG = b"O"
    """Option negotiation: version, the actions and the protocol steps the MTA offers."""
    QUIT = b"Q"
    """End of the session: close the connection."""
    RCPT = b"R"
    """RCPT TO: one recipient in angle brackets, then its ESMTP parameters."""
    DATA = b"T"
    """DATA, before the 354 (v4+)."""
    UNKNOWN = b"U"
    """An SMTP command the MTA did not recognise (v3+)."""


class Reply(bytes, enum.Enum):
    """Codes of the frames the filter sends to the MTA (SMFIR_*): replies and actions."""

    ADDRCPT = b"+"
    """Action: add a recipient."""
    DELRCPT = b"-"
    """Action: delete a recipient."""
    ADDRCPT_PAR = b"2"
    """Action: add a recipient with ESMTP parameters (v6)."""
    SHUTDOWN = b"4"
    """Reply: 421, close the SMTP connection."""
    ACCEPT = b"a"
    """Reply: accept the message (or the connection) without asking this filter further."""
    REPLBODY = b"b"
    """Action: a chunk of the replacement body (the chunks of one EOM make the new body)."""
    CONTINUE = b"c"
    """Reply: go on to the next step."""
    DISCARD = b"d"
    """Reply: say yes to the client, deliver nothing."""
    CHGFROM = b"e"
    """Action: change the envelope sender, optionally with ESMTP parameters (v6)."""
    CONNFAIL = b"f"
    """Reply: cause a connection failure (v6)."""
    ADDHEADER = b"h"
    """Action: append a header."""
    INSHEADER = b"i"
    """Action: insert a header at an index (0 is the top)."""
    SETSYMLIST = b"l"
    """The macro-list request; carried inside the OPTNEG reply."""
    CHGHEADER = b"m"
    """Action: change the n-th (1-based) header of a name; an empty value deletes it."""
    PROGRESS = b"p"
    """Reply: still working, reset the MTA's timeout (only at end of message)."""
    QUARANTINE = b"q"
    """Action: put the message on hold, with a reason."""
    REJECT = b"r"
    """Reply: 5xx with the MTA's default text."""
    SKIP = b"s"
    """Reply: stop sending body chunks, go to end of message (v6, with SMFIP_SKIP)."""
    TEMPFAIL = b"t"
    """Reply: 4xx with the MTA's default text."""
    REPLYCODE = b"y"
    """Reply: this SMTP reply, verbatim (``550 5.7.1 text``)."""
    OPTNEG = b"O"
    """The filter's answer to option negotiation."""


class Action(enum.IntFlag):
    """What a filter may do to a message (SMFIF_*): offered by the MTA, requested by the filter."""

    NONE = 0
    ADDHDRS = 0x01
    """Add headers."""
    CHGBODY = 0x02
    """Replace the body."""
    ADDRCPT = 0x04
    """Add recipients."""
    DELRCPT = 0x08
    """Delete recipients."""
    CHGHDRS = 0x10
    """Change or delete headers (insertion too, for SMFIR_INSHEADER)."""
    QUARANTINE = 0x20
    """Quarantine the message."""
    CHGFROM = 0x40
    """Change the envelope sender (v6)."""
    ADDRCPT_PAR = 0x80
    """Add recipients with ESMTP parameters (v6)."""
    SETSYMLIST = 0x100
    """Ask for the macros it wants at each stage (v6)."""


ALL_ACTIONS = Action(0x1FF)
"""Every action a v6 filter can request."""
V2_ACTIONS = Action(0x3F)
"""The actions that exist in protocol 2 (up to QUARANTINE)."""


class Step(enum.IntFlag):
    """Protocol flags (SMFIP_*): steps the filter does not want, and steps it will not answer.

    The MTA offers the flags it can honour; the filter answers with a subset. ``NO*`` means
    "do not send me this step", ``NR_*`` means "send it, but I will not reply".
    """

    NONE = 0
    NOCONNECT = 0x01
    """Do not send CONNECT."""
    NOHELO = 0x02
    """Do not send HELO."""
    NOMAIL = 0x04
    """Do not send MAIL FROM."""
    NORCPT = 0x08
    """Do not send RCPT TO."""
    NOBODY = 0x10
    """Do not send the body."""
    NOHDRS = 0x20
    """Do not send the headers."""
    NOEOH = 0x40
    """Do not send end of headers."""
    NR_HDR = 0x80
    """No reply to each header (also called SMFIP_NOHREPL)."""
    NOUNKNOWN = 0x100
    """Do not send unknown SMTP commands."""
    NODATA = 0x200
    """Do not send DATA."""
    SKIP = 0x400
    """The MTA understands SMFIR_SKIP."""
    RCPT_REJ = 0x800
    """Also send recipients the MTA has rejected (with macro {rcpt_mailer} = error)."""
    NR_CONN = 0x1000
    """No reply to CONNECT."""
    NR_HELO = 0x2000
    """No reply to HELO."""
    NR_MAIL = 0x4000
    """No reply to MAIL FROM."""
    NR_RCPT = 0x8000
    """No reply to RCPT TO."""
    NR_DATA = 0x10000
    """No reply to DATA."""
    NR_UNKN = 0x20000
    """No reply to unknown commands."""
    NR_EOH = 0x40000
    """No reply to end of headers."""
    NR_BODY = 0x80000
    """No reply to each body chunk."""
    HDR_LEADSPC = 0x100000
    """Header values keep their leading space, both ways."""
    MDS_256K = 0x10000000
    """Body chunks up to 256 KiB."""
    MDS_1M = 0x20000000
    """Body chunks up to 1 MiB."""


V2_STEPS = Step(0x7F)
"""The protocol flags that exist in protocol 2 (NOCONNECT to NOEOH)."""

NO_REPLY: dict[Command, Step] = {
    Command.CONNECT: Step.NR_CONN,
    Command.HELO: Step.NR_HELO,
    Command.MAIL: Step.NR_MAIL,
    Command.RCPT: Step.NR_RCPT,
    Command.DATA: Step.NR_DATA,
    Command.UNKNOWN: Step.NR_UNKN,
    Command.EOH: Step.NR_EOH,
    Command.BODY: Step.NR_BODY,
    Command.HEADER: Step.NR_HDR,
}
"""For each command that normally gets a reply, the flag that says it does not."""


class MacroStage(enum.IntEnum):
    """The stages a filter can ask macros for in its OPTNEG reply (SMFIM_*)."""

    CONNECT = 0
    HELO = 1
    ENVFROM = 2
    ENVRCPT = 3
    DATA = 4
    EOM = 5
    EOH = 6


class Family(bytes, enum.Enum):
    """Address families in CONNECT (SMFIA_*)."""

    UNKNOWN = b"U"
    """No address follows (e.g. a locally submitted message)."""
    UNIX = b"L"
    """A unix socket: the port is 0 and the address a path."""
    INET = b"4"
    """IPv4."""
    INET6 = b"6"
    """IPv6."""
