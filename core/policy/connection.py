"""One policy connection from a Postfix smtpd: requests in, pipeline stages run, actions out.

An smtpd process serves one SMTP session at a time and keeps its policy connection open for the
next ones, so one connection carries a series of sessions, each with a series of transactions:

- a **session** is one SMTP client connection: the client's address and port (and the server
  address and port it came in on). A request with other values starts a new session;
- a **transaction** is one message: Postfix's ``instance`` attribute, which changes at every
  MAIL FROM. A request of a MAIL, RCPT, DATA or END-OF-MESSAGE state with another instance
  starts a new transaction; a CONNECT, HELO or EHLO request ends the open one (EHLO resets).

For each request the stages up to its ``protocol_state`` run, each once per session or
transaction (``on_rcpt`` once per recipient), so a decision made at an earlier stage is
answered again at every later request: with Postfix's default ``smtpd_delay_reject = yes`` it
asks only at RCPT, and a sender refused by ``on_mail`` is refused there, once per recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mailgate import modifications as m
from mailgate.egress import MtaEgress
from mailgate.flow import SessionFlow
from mailgate.logging import get_logger
from mailgate.message import Message
from mailgate.pipeline import HookCall, Pipeline
from mailgate.policy.protocol import (
    DUNNO,
    PolicyProtocolError,
    RequestReader,
    format_reply,
    prepend_action,
    verdict_action,
)
from mailgate.policy.settings import PolicyListenerSettings
from mailgate.session import Address, Session, Transaction
from mailgate.smtp import replies
from mailgate.syntax import ascii_number, ascii_port
from mailgate.verdict import Verdict, VerdictKind, aborted

log = get_logger("mailgate.policy")

_READ_SIZE = 65536
_ORDER = {"CONNECT": 0, "HELO": 1, "EHLO": 1, "MAIL": 2, "RCPT": 3, "DATA": 4, "END-OF-MESSAGE": 5}
"""The SMTP stages in order; VRFY and ETRN run only the session's stages."""
_MAIL, _RCPT, _DATA, _EOM = 2, 3, 4, 5
_WITHHELD = frozenset({"headers", "body"})
_HEADERS = (m.AddHeader, m.InsertHeader)
_WHOLE_MESSAGE = (VerdictKind.DISCARD, VerdictKind.QUARANTINE)


_NUMBERS = {
    "client_port": 5,
    "server_port": 5,
    "size": 20,
    "recipient_count": 10,
    "encryption_keysize": 10,
}
"""Numeric attributes and their most digits (Postfix sends ASCII digits, or nothing)."""


def check_numbers(attrs: dict[str, str]) -> None:
    """Raise `PolicyProtocolError` for a numeric attribute that is not ASCII digits (``²``), is
    too long, or (ports) is over 65535: Postfix never sends one, so the peer is not Postfix."""
    for name, digits in _NUMBERS.items():
        value = attrs.get(name, "")
        if not value:
            continue
        number = ascii_number(value, digits)
        if number is None or (name.endswith("_port") and number > 65535):
            raise PolicyProtocolError(f"attribute {name}: not a number: {value[:40]!r}")


def session_key(attrs: dict[str, str]) -> tuple[str, str, str, str]:
    """What identifies one SMTP session in a request: client and server address and port."""
    return (
        attrs.get("client_address", ""),
        attrs.get("client_port", ""),
        attrs.get("server_address", ""),
        attrs.get("server_port", ""),
    )


def new_session(attrs: dict[str, str], listener: str) -> Session:
    """The session a request describes: client, reverse name, TLS and SASL facts."""
    port = attrs.get("client_port", "")
    # client_name is Postfix's forward-confirmed name ("unknown" when it is not);
    # reverse_client_name is the unconfirmed PTR, which anyone who controls the PTR can set.
    name = attrs.get("client_name", "")
    session = Session(
        client_ip=attrs.get("client_address", ""),
        client_port=ascii_port(port) or 0,
        client_name="" if name == "unknown" else name,
        listener=listener,
    )
    session.ingress = "policy"
    update_session(session, attrs)
    return session


def update_session(session: Session, attrs: dict[str, str]) -> None:
    """Take TLS and SASL facts from a request (STARTTLS and AUTH happen mid-session)."""
    session.macros.update(attrs)
    if attrs.get("encryption_protocol"):
        session.tls = True
        session.tls_version = attrs["encryption_protocol"]
        session.tls_cipher = attrs.get("encryption_cipher", "")
    if attrs.get("sasl_username"):
        session.auth_login = attrs["sasl_username"]


def new_sender(attrs: dict[str, str]) -> Address:
    """MAIL FROM as Postfix reports it; its ``size`` becomes the ``SIZE=`` parameter."""
    size = ascii_number(attrs.get("size", "0")) or 0
    params = [f"SIZE={size}"] if size > 0 else []
    return Address(attrs.get("sender", ""), params)


@dataclass
class _Tx:
    """One transaction (one ``instance``) and what was decided for it so far."""

    instance: str
    tx: Transaction | None = None
    """The flow's transaction; None until MAIL ran, and for a sender refused at MAIL."""
    verdict: Verdict | None = None
    """A decision for the whole message (MAIL, DATA, END-OF-MESSAGE): answered from then on."""
    stage: int = 0
    """The last stage run (0: none yet)."""
    recipients: dict[str, Verdict | None] = field(default_factory=dict)
    """Each recipient seen and what `on_rcpt` said for it."""
    sent: int = 0
    """How many of ``tx.modifications`` have been answered or warned about."""
    warned: bool = False


class PolicyConnection:
    """The policy server side of one Postfix connection (see the module docstring)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: PolicyListenerSettings,
        pipeline: Callable[[], Pipeline],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.settings = settings
        self.current_pipeline = pipeline
        """Called at each new SMTP session: a reload reaches the next session, not only the
        next connection (Postfix keeps a policy connection for up to 1000 s)."""
        self.pipeline = self._view(pipeline())
        self.flow: SessionFlow | None = None
        self.egress = MtaEgress()
        self.key: tuple[str, str, str, str] | None = None
        self.session_verdict: Verdict | None = None
        """A refusal, discard or hold from CONNECT or HELO: answered for the whole session."""
        self.helo = ""
        self.current: _Tx | None = None
        self._made_by: dict[int, str] = {}

    def _view(self, pipeline: Pipeline) -> Pipeline:
        """`pipeline` with one more observer, which learns which plugin made each change (for
        the warning about changes a policy reply cannot carry). Plugins are shared, not copied."""
        view = copy.copy(pipeline)
        view.observers = [*pipeline.observers, self._watch]
        return view

    def _watch(self, call: HookCall, session: Session, tx: Transaction | None) -> None:
        for mod in call.modifications:
            self._made_by[id(mod)] = call.plugin

    async def run(self) -> None:
        """Answer requests until Postfix closes the connection, a bad request or the idle limit."""
        requests = RequestReader(self.settings.max_request)
        peer = self.writer.get_extra_info("peername") or "unix"
        try:
            while True:
                async with asyncio.timeout(self.settings.idle_timeout):
                    data = await self.reader.read(_READ_SIZE)
                if not data:
                    break
                for attrs in requests.feed(data):
                    self.writer.write(format_reply(await self.answer(attrs)))
                await self.writer.drain()
        except PolicyProtocolError as exc:
            log.warning("policy protocol error, closing connection", peer=peer, reason=str(exc))
        except TimeoutError:
            log.info("policy connection idle, closing", peer=peer)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("policy connection lost", peer=peer, reason=str(exc))
        finally:
            await self.end_session()
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()

    # -- one request ------------------------------------------------------------------------------

    async def answer(self, attrs: dict[str, str]) -> str:
        """Run the stages `attrs` reaches and return the action for Postfix."""
        if attrs.get("request") != "smtpd_access_policy":
            log.warning("unknown policy request", request=attrs.get("request", ""))
            return DUNNO
        check_numbers(attrs)
        stage = _ORDER.get(attrs.get("protocol_state", "").upper())
        session = await self.open_session(attrs)
        if stage is None:  # VRFY, ETRN: no transaction involved
            return verdict_action(await self.session_stages(session, attrs, 1))
        if stage < _MAIL and self.current is not None:
            await self.end_transaction()  # a new EHLO resets the transaction
        verdict = await self.session_stages(session, attrs, stage)
        if verdict is not None or stage < _MAIL:
            return verdict_action(verdict)
        current = await self.transaction(attrs)
        verdict = await self.transaction_stages(session, current, attrs, stage)
        return self.action(current, verdict)

    async def open_session(self, attrs: dict[str, str]) -> Session:
        """The session of this request: the current one, or a new one if the client changed."""
        key = session_key(attrs)
        if self.flow is None or key != self.key:
            await self.end_session()
            self.key = key
            self.pipeline = self._view(self.current_pipeline())
            if len(attrs) > self.settings.max_attributes:
                raise PolicyProtocolError(f"more than {self.settings.max_attributes} attributes")
            session = new_session(attrs, self.settings.name)
            self.flow = SessionFlow(self.pipeline, session, self.egress)
            verdict = await self.flow.open()
            if verdict is not None and verdict.kind is not VerdictKind.ACCEPT:
                self.session_verdict = verdict
        else:
            kept = self.flow.session.macros
            added = sum(1 for name in attrs if name not in kept)
            if len(kept) + added > self.settings.max_attributes:
                raise PolicyProtocolError(
                    f"more than {self.settings.max_attributes} attribute names in one session"
                )
            update_session(self.flow.session, attrs)
        return self.flow.session

    @property
    def session(self) -> Session | None:
        """The current SMTP session (None between sessions)."""
        return None if self.flow is None else self.flow.session

    async def session_stages(
        self, session: Session, attrs: dict[str, str], stage: int
    ) -> Verdict | None:
        """HELO when a new name was given; the session's own decision (CONNECT, HELO)."""
        name = attrs.get("helo_name", "")
        if self._refused(self.session_verdict) is None and stage >= 1 and name != self.helo:
            assert self.flow is not None
            self.helo = session.helo = name
            verdict = await self.flow.helo(name)
            if verdict is not None and verdict.kind is not VerdictKind.ACCEPT:
                self.session_verdict = verdict
        refused = self._refused(self.session_verdict)
        return refused if refused is not None or stage >= _MAIL else self.session_verdict

    @staticmethod
    def _refused(verdict: Verdict | None) -> Verdict | None:
        return verdict if verdict is not None and verdict.is_refusal else None

    async def transaction(self, attrs: dict[str, str]) -> _Tx:
        """The transaction of this request's ``instance``, new if it changed."""
        instance = attrs.get("instance", "")
        current = self.current
        if current is None or current.instance != instance:
            await self.end_transaction()
            current = self.current = _Tx(instance)
            if self.session_verdict is not None and not self.session_verdict.is_refusal:
                # A discard or hold from CONNECT or HELO applies to every message.
                current.verdict = self.session_verdict
        tx = current.tx
        if tx is not None:
            if attrs.get("queue_id"):
                tx.queue_id = attrs["queue_id"]
            size = ascii_number(attrs.get("size", "")) or 0
            if size > 0:
                # SIZE= from MAIL FROM until the data is in, then the real size.
                sender = tx.sender
                sender.params = [p for p in sender.params if not p.upper().startswith("SIZE=")]
                sender.params.append(f"SIZE={size}")
        return current

    async def mail(self, current: _Tx, attrs: dict[str, str]) -> None:
        """MAIL FROM, once per transaction: the flow opens it, or the sender is refused."""
        assert self.flow is not None
        current.stage = _MAIL
        verdict = await self.flow.mail(new_sender(attrs))
        tx = current.tx = self.flow.tx
        if tx is not None:
            # No content ever comes through a policy server; an empty message with both parts
            # withheld lets plugins add headers before the end of data (sent as PREPEND).
            tx.message = Message([], io.BytesIO(), 0, withheld=_WITHHELD)
            if attrs.get("queue_id"):
                tx.queue_id = attrs["queue_id"]
        self._record(current, verdict)

    async def transaction_stages(
        self, session: Session, current: _Tx, attrs: dict[str, str], stage: int
    ) -> Verdict | None:
        """MAIL, RCPT, DATA and END-OF-MESSAGE, each once; the verdict for this request."""
        if current.stage < _MAIL:
            await self.mail(current, attrs)
        recipient = attrs.get("recipient", "")
        rcpt_verdict = None
        if stage >= _RCPT and recipient and not self._blocked(current):
            rcpt_verdict = await self.rcpt(session, current, recipient)
        if stage >= _DATA and current.stage < _DATA and not self._blocked(current):
            assert self.flow is not None
            current.stage = _DATA
            await self._decide(current, self.flow.data())
        if stage >= _EOM and current.stage < _EOM and not self._blocked(current):
            current.stage = _EOM
            await self.end_of_message(session, current)
        return self._refused(current.verdict) or rcpt_verdict or current.verdict

    async def rcpt(self, session: Session, current: _Tx, recipient: str) -> Verdict | None:
        """`on_rcpt` once per recipient; asked again (another restriction list), same answer.

        A refused recipient goes to `on_rcpt_refused`. One a plugin deleted stays: Postfix
        still delivers to it (the deletion is among the changes a reply cannot carry)."""
        assert self.flow is not None and current.tx is not None
        if recipient not in current.recipients:
            address = Address(recipient)
            verdict = await self.flow.rcpt(address)
            joined = any(r is address for r in current.tx.recipients)
            if (verdict is None or not verdict.is_refusal) and not joined:
                current.tx.recipients.append(address)
            current.recipients[recipient] = verdict
            if verdict is not None and verdict.kind in _WHOLE_MESSAGE and current.verdict is None:
                current.verdict = verdict  # Postfix discards or holds the whole message
            current.stage = max(current.stage, _RCPT)
        verdict = current.recipients[recipient]
        return None if verdict is not None and verdict.kind is VerdictKind.ACCEPT else verdict

    async def end_of_message(self, session: Session, current: _Tx) -> None:
        """END-OF-MESSAGE: `on_headers` and `on_message` with the content withheld."""
        assert self.flow is not None
        if await self._decide(current, self.flow.headers([])) is None:
            await self._decide(current, self.flow.message_verdict())

    async def _decide(self, current: _Tx, stage: Awaitable[Verdict | None]) -> Verdict | None:
        """Await a stage; a refusal, discard or hold becomes the transaction's verdict."""
        return self._record(current, await stage)

    @staticmethod
    def _record(current: _Tx, verdict: Verdict | None) -> Verdict | None:
        if verdict is not None and verdict.kind is not VerdictKind.ACCEPT:
            if current.verdict is None or verdict.is_refusal:
                current.verdict = verdict
            return verdict
        return None

    @staticmethod
    def _blocked(current: _Tx) -> bool:
        return current.verdict is not None and current.verdict.is_refusal

    def action(self, current: _Tx, verdict: Verdict | None) -> str:
        """The one action for this request: a decision, a held message, or one new header."""
        tx = current.tx
        if tx is None:
            return verdict_action(verdict)
        if verdict is None and tx.quarantined is not None:
            verdict = Verdict.quarantine(reason=tx.quarantined)
        new = tx.modifications[current.sent :]
        current.sent = len(tx.modifications)
        action = verdict_action(verdict)
        headers = [mod for mod in new if isinstance(mod, _HEADERS)]
        if action == DUNNO and headers and current.stage < _EOM:
            first = headers.pop(0)
            assert isinstance(first, _HEADERS)
            action = prepend_action(first.name, first.value)
            new = [mod for mod in new if mod is not first]
        self._warn_unsent(current, [mod for mod in new if not isinstance(mod, m.Quarantine)])
        return action

    def _warn_unsent(self, current: _Tx, mods: list[m.Modification]) -> None:
        """Log, once per transaction, changes a policy reply cannot carry."""
        if not mods or current.warned:
            return
        current.warned = True
        log.warning(
            "changes a policy reply cannot carry were dropped",
            queue_id=current.tx.queue_id if current.tx is not None else "",
            changes=[
                f"{self._made_by.get(id(mod), '?')}: {type(mod).__name__} {_describe(mod)}"
                for mod in mods
            ],
        )

    # -- endings ----------------------------------------------------------------------------------

    async def end_transaction(self) -> None:
        """Report the open transaction's outcome: what mailgate last decided for it."""
        current, self.current = self.current, None
        flow = self.flow
        if current is None or flow is None or flow.tx is None:
            return  # none, or refused at MAIL: no transaction, as on the other listeners
        final = _final(current)
        if final is None or final.reason.startswith("aborted"):
            await flow.abort(final.reason if final is not None else "aborted")
        else:
            await flow.finish(final, replies.from_verdict(final))

    async def end_session(self) -> None:
        """The SMTP session is over (another client, or the connection closed): on_disconnect."""
        await self.end_transaction()
        flow, self.flow = self.flow, None
        self.key, self.session_verdict, self.helo = None, None, ""
        self._made_by.clear()
        if flow is not None:
            await flow.close("aborted: the SMTP session ended")


def _final(current: _Tx) -> Verdict | None:
    """The verdict `on_outcome` gets; None for a sender refused at MAIL FROM (no transaction).

    Postfix does not tell a policy server how a message ended, so this is mailgate's own last
    word: a decision for the whole message if there was one; else accept when a recipient
    passed (Postfix may still refuse the message for reasons of its own); else the refusal of
    the last recipient; else, with no recipient asked about, an aborted transaction.
    """
    verdict = current.verdict
    if verdict is not None:
        refused_at_mail = verdict.is_refusal and current.stage == _MAIL and not current.recipients
        return None if refused_at_mail else verdict
    answers = list(current.recipients.values())
    if any(v is None or not v.is_refusal for v in answers):
        return Verdict.accept()
    if answers and answers[-1] is not None:
        return answers[-1]
    return aborted("aborted: the policy listener saw no recipient")


def _describe(mod: m.Modification) -> str:
    match mod:
        case m.AddHeader(name, value) | m.InsertHeader(_, name, value):
            return f"{name}: {value}"
        case m.ChangeHeader(name, _, value):
            return f"{name}: {value}"
        case m.DeleteHeader(name, _):
            return name
        case m.AddRecipient(address, _) | m.DeleteRecipient(address):
            return address
        case m.ChangeSender(address, _):
            return address
        case _:
            return ""
