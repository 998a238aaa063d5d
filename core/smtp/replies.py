"""The replies the SMTP listener gives on its own, each with its enhanced status code."""

from __future__ import annotations

from mailgate.egress import Reply
from mailgate.smtp.data import DataProblem
from mailgate.verdict import Verdict, VerdictKind

OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
BYE = Reply(221, "2.0.0", "Bye")
START_TLS = Reply(220, "2.0.0", "Ready to start TLS")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")
SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
UNKNOWN_COMMAND = Reply(500, "5.5.1", "Command not recognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Send HELO or EHLO first")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command")
NESTED_MAIL = Reply(503, "5.5.1", "Nested MAIL command")
BAD_ADDRESS = Reply(553, "5.1.3", "Malformed address")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "MAIL FROM/RCPT TO parameter not recognized")
NO_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address without SMTPUTF8")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
TOO_MANY_SESSIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_CLIENT = Reply(421, "4.7.0", "Too many connections from your address")
TOO_MANY_JUNK = Reply(421, "4.7.0", "Too many commands without progress, closing connection")
ENVELOPE_TIMEOUT = Reply(421, "4.4.2", "No recipient in time, closing connection")
TRANSACTION_TIMEOUT = Reply(421, "4.4.2", "Transaction took too long, closing connection")
DATA_TOO_SLOW = Reply(421, "4.4.2", "Data arrives too slowly, closing connection")
DOWNSTREAM_FAILED = Reply(451, "4.4.0", "Downstream unavailable, try again later")
DOWNSTREAM_TIMEOUT = Reply(451, "4.4.2", "Downstream timed out, try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error, try again later")
LOCAL_ERROR_CLOSING = Reply(421, "4.3.0", "Local error, closing connection")
QUARANTINE_FAILED = Reply(451, "4.3.0", "Quarantine unavailable, try again later")
VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
EXPN = Reply(502, "5.5.1", "EXPN not implemented")
HELP = Reply(214, "2.0.0", "See RFC 5321")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many hops")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPFAIL = Reply(454, "4.7.0", "Temporary authentication failure")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
AUTH_UNDECODABLE = Reply(501, "5.5.2", "Cannot decode response")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_NOT_OFFERED = Reply(503, "5.5.1", "Authentication not enabled")
AUTH_TWICE = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
REFUSED_SESSION = Reply(503, "5.5.1", "Session refused, only QUIT is allowed")


def message_too_big(limit: int) -> Reply:
    """``552 5.3.4``: the message (SIZE parameter or actual bytes) is larger than `limit`."""
    return Reply(552, "5.3.4", f"Message too big, limit is {limit} bytes")


def data_refused(problem: DataProblem, *, max_line: int, max_header: int, max_size: int) -> Reply:
    """The reply to a DATA that was read to its end but is refused."""
    if problem is DataProblem.NUL:
        return Reply(554, "5.6.0", "Message refused: NUL byte in data")
    if problem is DataProblem.BARE_LINE_ENDING:
        return Reply(554, "5.6.0", "Message refused: bare LF or CR in data, lines must end in CRLF")
    if problem is DataProblem.LINE_TOO_LONG:
        return Reply(500, "5.5.2", f"Line too long, limit is {max_line} bytes")
    if problem is DataProblem.NO_SPACE:
        return Reply(452, "4.3.1", "Insufficient system storage, try again later")
    if problem is DataProblem.HEADER_TOO_BIG:
        return Reply(552, "5.3.4", f"Header block too big, limit is {max_header} bytes")
    return message_too_big(max_size)


def from_verdict(verdict: Verdict) -> Reply:
    """A plugin's verdict as the reply the client gets."""
    return Reply(verdict.code, verdict.status, verdict.text)


def to_verdict(reply: Reply, *, reason: str) -> Verdict:
    """A refusal reply (ours or the downstream's) as the verdict reported to `on_outcome`."""
    text = reply.text or None
    status = reply.status if reply.status[:1] == str(reply.code)[:1] else ""
    if 500 <= reply.code < 600:
        return Verdict.reject(reply.code, status, text, reason=reason)
    if 400 <= reply.code < 500 and reply.code != 421:
        return Verdict.tempfail(reply.code, status, text, reason=reason)
    if reply.code == 421:
        return Verdict.disconnect(text, reason=reason)
    return Verdict.tempfail(451, "4.3.0", text, reason=reason)


ACCEPTED_KINDS = (VerdictKind.ACCEPT, VerdictKind.QUARANTINE, VerdictKind.DISCARD)
"""Verdicts that answer 2xx to the client."""
