"""One external milter (protocol 2 or 6) as the `milter` plugin calls it, stage by stage.

Each SMTP session gets its own connection to the milter, opened at the first stage the milter
is called at and reused for every transaction of the session (ABORT between), closed with QUIT
at disconnect. The envelope steps go out at their own stage when listed in ``stages``;
otherwise they wait and go out with the next listed stage. Headers and body go out at the end
of data, as the plugins before this one left them, so in a chain each milter sees the message as
the milters before it left it. The milter's replies become verdicts, its actions become the
transaction's modifications.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from mailgate import Address, Message, Session, Transaction, Verdict
from mailgate.logging import get_logger
from mailgate.milter import codec as c
from mailgate.milter.options import Negotiated
from mailgate.milter.protocol import BODY_CHUNK, Command, Step
from mailgate.milter.translate import apply_actions, milter_verdict
from mailgate.plugins.milter.client import (
    Answer,
    MilterClient,
    MilterFailure,
    MilterGone,
    NegotiationChanged,
)
from mailgate.plugins.milter.macros import (
    POSTFIX_DEFAULTS,
    STAGE_OF,
    macro_frame,
    refused_values,
    session_values,
    transaction_values,
)
from mailgate.plugins.milter.settings import STAGES, MilterEntry
from mailgate.sockaddr import SocketAddress

log = get_logger("mailgate.plugins.milter")

_ORDER: dict[str, int] = {name: i for i, name in enumerate(STAGES)}
_BODY_GROUP = 1 << 20
"""Body bytes per write when the milter does not answer each chunk."""


MAX_REFUSED_KEPT = 100
"""Refused recipients kept per message for a milter whose `stages` leave out ``rcpt`` (sent
with its next stage): a client can send any number of RCPTs that are refused."""


@dataclass(slots=True)
class _Refused:
    """A refused recipient waiting for the milter's next stage."""

    position: int
    """How many recipients had joined the transaction when it was refused."""
    recipient: Address
    verdict: Verdict


@dataclass(slots=True)
class _Link:
    """One session's connection to the milter, and how far the milter has been told."""

    client: MilterClient
    reopened: bool = False
    sent_connect: bool = False
    sent_helo: str | None = None
    tx_id: str | None = None
    mail_open: bool = False
    rcpts_sent: set[tuple[str, tuple[str, ...]]] = field(default_factory=set)
    """The recipients the milter was told of in this transaction, by value (`_rcpt_key`)."""
    refused_later: list[_Refused] = field(default_factory=list)
    """Refused recipients of transaction `refused_tx` not sent yet (stages without ``rcpt``)."""
    refused_tx: str | None = None
    data_sent: bool = False
    done_session: bool = False
    done_tx: str | None = None
    discard_session: bool = False
    discard_tx: str | None = None
    failed: Verdict | None = None
    """After a failure under ``tempfail`` or ``reject``: the answer for the rest of the session."""

    def forget_connection(self) -> None:
        """A new connection: the milter knows nothing yet."""
        self.sent_connect = False
        self.sent_helo = None
        self.tx_id = None
        self.mail_open = False
        self.rcpts_sent = set()
        self.data_sent = False


def _wire(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def client_tls(settings: MilterEntry) -> ssl.SSLContext | None:
    """The TLS context for connections to the milter (None without ``tls``); ValueError naming
    the key when a file cannot be read."""
    if not settings.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        if settings.tls_ca_file:
            context.load_verify_locations(cafile=settings.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"tls_ca_file: cannot load {settings.tls_ca_file}: {exc}") from None
    try:
        if settings.tls_cert_file:
            context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"tls_cert_file: cannot load {settings.tls_cert_file}: {exc}") from None
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def interleave(
    recipients: Sequence[Address],
    sent: AbstractSet[tuple[str, tuple[str, ...]]],
    refused: Sequence[_Refused],
) -> list[tuple[Address, Verdict | None]]:
    """The RCPTs to send, in the order the client gave them: the `recipients` not `sent` yet
    (with None), and each refused one (with its refusal) after the first ``position`` of
    `recipients`."""
    queue: list[tuple[Address, Verdict | None]] = []
    waiting = iter(refused)
    next_refused = next(waiting, None)
    for i, rcpt in enumerate(recipients):
        while next_refused is not None and next_refused.position <= i:
            queue.append((next_refused.recipient, next_refused.verdict))
            next_refused = next(waiting, None)
        if _rcpt_key(rcpt) not in sent:
            queue.append((rcpt, None))
    while next_refused is not None:
        queue.append((next_refused.recipient, next_refused.verdict))
        next_refused = next(waiting, None)
    return queue


class BridgedMilter:
    """One external milter (opendkim, rspamd, clamav-milter, ...), called at the stages it
    wants. The `milter` plugin holds one per milter of its file, in order."""

    def __init__(self, settings: MilterEntry | None = None) -> None:
        self.settings = settings or MilterEntry()
        self.address = SocketAddress.parse(self.settings.address)
        self.name = self.settings.name or self.settings.address
        self.hostname = self.settings.hostname or socket.gethostname()
        self.tls = client_tls(self.settings)
        self._key = f"milter:{self.name}"
        self._agreed: Negotiated | None = None
        """What the milter agreed to last time: new connections pipeline OPTNEG with it."""
        s = self.settings
        self._fixed_timeouts = all(
            t.is_fixed for t in (s.connect_timeout, s.command_timeout, s.eom_timeout)
        )

    def _set_timeouts(self, client: MilterClient, session: Session, tx: Transaction | None) -> None:
        """The timeouts of this session and transaction, for the exchange about to start."""
        s = self.settings
        client.connect_timeout = s.connect_timeout.value(session, tx)
        client.command_timeout = s.command_timeout.value(session, tx)
        client.eom_timeout = s.eom_timeout.value(session, tx)

    # -- the stages --------------------------------------------------------------------------

    async def connect(self, session: Session) -> Verdict | None:
        """Tell the milter about the connection (CONNECT)."""
        return await self._stage("connect", session, None)

    async def helo(self, session: Session, name: str) -> Verdict | None:
        """HELO/EHLO (a second one is sent again)."""
        return await self._stage("helo", session, None, helo=name)

    async def mail(self, session: Session, transaction: Transaction) -> Verdict | None:
        """MAIL FROM (an ABORT first if an earlier transaction was told)."""
        return await self._stage("mail", session, transaction)

    async def rcpt(
        self, session: Session, transaction: Transaction, recipient: Address
    ) -> Verdict | None:
        """RCPT TO: a refusal refuses this recipient only."""
        return await self._stage("rcpt", session, transaction, recipient)

    async def rcpt_refused(
        self, session: Session, transaction: Transaction, recipient: Address, verdict: Verdict
    ) -> None:
        """A recipient refused by a plugin or the downstream, for a milter that asked for them
        (SMFIP_RCPT_REJ): sent as RCPT with ``{rcpt_mailer}`` = ``error``, as Postfix sends
        the recipients it refuses, now, or with the next stage when `stages` leave out
        ``rcpt``. What the milter answers to it does not count."""
        link = session.notes.get(self._key)
        if not isinstance(link, _Link):
            return  # not one stage reached this session (a `when` kept the milter out)
        if "rcpt" not in self.settings.stages or link.tx_id != transaction.id:
            # Not told of this transaction yet: goes with the MAIL when it is.
            self._keep_refused(link, transaction, recipient, verdict)
            return
        if not self._wants_refused(link, transaction, recipient):
            return
        try:
            answer = await self._send(link, "rcpt", session, transaction, recipient, "", verdict)
        except (MilterGone, MilterFailure) as exc:
            link.client.abandon()
            self._failed(link, "rcpt", session, transaction, str(exc))
            return
        if answer.out_of_step:
            link.client.abandon()

    def _keep_refused(
        self, link: _Link, tx: Transaction, recipient: Address, verdict: Verdict
    ) -> None:
        """Keep a refused recipient for the next stage, unless the milter is known not to want
        it (its negotiation, or it is done with this message)."""
        agreed = link.client.agreed or self._agreed
        if agreed is not None and not agreed.protocol & Step.RCPT_REJ:
            return
        if link.failed is not None or link.done_session or link.done_tx == tx.id:
            return
        if link.refused_tx != tx.id:
            link.refused_tx, link.refused_later = tx.id, []
        if len(link.refused_later) < MAX_REFUSED_KEPT:
            link.refused_later.append(_Refused(len(tx.recipients), recipient, verdict))

    def _wants_refused(self, link: _Link, tx: Transaction, recipient: Address) -> bool:
        """True if this milter asked for refused recipients, is still listening to this
        transaction, and has not been sent this recipient already (it came before the refusal)."""
        agreed = link.client.agreed
        return (
            agreed is not None
            and link.client.is_open
            and bool(agreed.protocol & Step.RCPT_REJ)
            and link.tx_id == tx.id
            and link.failed is None
            and not link.done_session
            and link.done_tx != tx.id
            and _rcpt_key(recipient) not in link.rcpts_sent
        )

    async def data(self, session: Session, transaction: Transaction) -> Verdict | None:
        """DATA (protocol 4 and later)."""
        return await self._stage("data", session, transaction)

    async def message(self, session: Session, transaction: Transaction) -> Verdict | None:
        """Headers, body and end of message; the milter's actions become modifications."""
        return await self._stage("message", session, transaction)

    async def unknown(
        self, session: Session, transaction: Transaction | None, command: str
    ) -> Verdict | None:
        """An SMTP command the client sent that is not known (SMFIC_UNKNOWN), for a milter
        that did not decline it (SMFIP_NOUNKNOWN): its answer applies to that command."""
        link = session.notes.get(self._key)
        if isinstance(link, _Link):
            agreed = link.client.agreed or self._agreed
            if agreed is not None and not agreed.sends(Command.UNKNOWN):
                return None
        elif self._agreed is not None and not self._agreed.sends(Command.UNKNOWN):
            return None
        return await self._stage("unknown", session, transaction, command=command)

    async def disconnect(self, session: Session) -> None:
        """QUIT and close the session's connection."""
        link = session.notes.pop(self._key, None)
        if isinstance(link, _Link):
            await link.client.close()

    # -- one stage -----------------------------------------------------------------------------

    def _link(self, session: Session) -> _Link:
        link = session.notes.get(self._key)
        if not isinstance(link, _Link):
            s = self.settings
            client = MilterClient(
                self.address,
                version=s.version,
                connect_timeout=s.connect_timeout.default,
                command_timeout=s.command_timeout.default,
                eom_timeout=s.eom_timeout.default,
                max_frame=s.max_frame,
                max_response=s.max_response_size,
                tls=self.tls,
                tls_server_name=s.tls_server_name,
            )
            link = session.notes[self._key] = _Link(client)
        return link

    async def _stage(
        self,
        stage: str,
        session: Session,
        tx: Transaction | None,
        recipient: Address | None = None,
        helo: str = "",
        command: str = "",
    ) -> Verdict | None:
        link = self._link(session)
        if stage == "message" and (
            link.discard_session or (tx is not None and link.discard_tx == tx.id)
        ):
            return Verdict.discard(reason=f"milter {self.name} discarded the message")
        if link.failed is not None:
            return link.failed
        if link.done_session or (tx is not None and link.done_tx == tx.id):
            return None
        if stage != "unknown" and stage not in self.settings.stages:
            return None
        if not self._fixed_timeouts:
            self._set_timeouts(link.client, session, tx)
        try:
            try:
                answer = await self._exchange(link, stage, session, tx, recipient, helo, command)
            except MilterGone as exc:
                if link.reopened:
                    raise
                log.info("milter connection lost, reopening", milter=self.name, reason=str(exc))
                link.reopened = True
                link.client.abandon()
                answer = await self._exchange(link, stage, session, tx, recipient, helo, command)
        except MilterFailure as exc:
            link.client.abandon()
            return self._failed(link, stage, session, tx, str(exc))
        except BaseException:
            # Cancelled (the plugin's own timeout) in the middle of an exchange.
            link.client.abandon()
            raise
        if answer.out_of_step:
            link.client.abandon()
        return self._decide(link, stage, answer, tx)

    def _failed(
        self, link: _Link, stage: str, session: Session, tx: Transaction | None, why: str
    ) -> Verdict | None:
        policy = self.settings.on_failure.value(session, tx)
        log.warning("milter failed", milter=self.name, stage=stage, reason=why, policy=policy)
        session.count("milter_failures")
        if tx is not None:
            tx.set_result(self.name, "error", reason=why, policy=policy)
        # As Postfix's milter_default_action: a refusing policy holds for the rest of the session.
        reason = f"milter {self.name}: {why}"
        if policy == "tempfail":
            text = "Service unavailable - try again later"
            link.failed = Verdict.tempfail(451, "4.7.1", text, reason=reason)
            return link.failed
        if policy == "reject":
            link.failed = Verdict.reject(554, "5.7.1", "Service unavailable", reason=reason)
            return link.failed
        if policy == "accept" or tx is None:
            link.done_session = True
        else:
            link.done_tx = tx.id
        return None

    # -- what goes out -------------------------------------------------------------------------

    async def _exchange(
        self,
        link: _Link,
        stage: str,
        session: Session,
        tx: Transaction | None,
        recipient: Address | None,
        helo: str,
        command: str = "",
    ) -> Answer:
        client = link.client
        if not client.is_open:
            link.forget_connection()
            self._agreed = await client.open(self._agreed)
        try:
            return await self._send(link, stage, session, tx, recipient, helo, command=command)
        except NegotiationChanged:  # only after an open() that reused a known answer
            # The milter was reconfigured: negotiate the slow way on a new connection.
            self._agreed = None
            client.abandon()
            link.forget_connection()
            self._agreed = await client.open()
            return await self._send(link, stage, session, tx, recipient, helo, command=command)

    async def _send(
        self,
        link: _Link,
        stage: str,
        session: Session,
        tx: Transaction | None,
        recipient: Address | None,
        helo: str,
        refused: Verdict | None = None,
        *,
        command: str = "",
    ) -> Answer:
        """Send what the milter has not been told yet up to `stage`; `refused` marks
        `recipient` as one that was refused (SMFIP_RCPT_REJ). At the ``unknown`` stage, the
        session's pending steps and then `command` (SMFIC_UNKNOWN)."""
        client = link.client
        out = _Commands(client, session, self.hostname)
        at = _ORDER.get(stage, _ORDER["helo"])
        if not link.sent_connect:
            out.add(Command.CONNECT, c.encode(_connect_frame(session)))
            link.sent_connect = True
        helo = helo or session.helo
        if at >= _ORDER["helo"] and helo and link.sent_helo != helo:
            out.add(Command.HELO, c.encode(c.Helo(_wire(helo))))
            link.sent_helo = helo
        if stage == "unknown":
            out.add(Command.UNKNOWN, c.encode(c.Unknown(_wire(command))))
            return await out.step()
        if tx is None or at < _ORDER["mail"]:
            return await out.step()
        out.values.update(transaction_values(tx))
        if link.tx_id != tx.id:
            if link.mail_open:
                client.send_raw(_ABORT)
            client.new_message()
            mail = c.Mail(_angle(tx.sender.address), _params(tx.sender.params))
            out.add(Command.MAIL, c.encode(mail))
            link.tx_id, link.mail_open, link.rcpts_sent, link.data_sent = tx.id, True, set(), False
        self._recipients(link, out, stage, tx, recipient, refused)
        if at >= _ORDER["data"] and not link.data_sent:
            out.values.update(transaction_values(tx))
            out.add(Command.DATA, _DATA)
            link.data_sent = True
        if stage != "message":
            return await out.step()
        assert tx.message is not None
        return await self._content(client, out, tx.message)

    def _recipients(
        self,
        link: _Link,
        out: _Commands,
        stage: str,
        tx: Transaction,
        recipient: Address | None,
        refused: Verdict | None,
    ) -> None:
        """The RCPTs the milter was not sent yet: the transaction's recipients, this stage's
        `recipient` (refused if `refused`), and the refused ones kept for this stage (in the
        order they came among the others)."""
        sent = link.rcpts_sent
        later: list[_Refused] = []
        if link.refused_tx == tx.id and link.refused_later:
            agreed = out.agreed
            if agreed.protocol & Step.RCPT_REJ and agreed.sends(Command.RCPT):
                later = link.refused_later
            link.refused_later = []
        queue = interleave(tx.recipients, sent, later)
        if recipient is not None and stage == "rcpt":
            queue.append((recipient, refused))
        for rcpt, refusal in queue:
            out.values.update(transaction_values(tx, rcpt))
            frame = c.encode(c.Rcpt(_angle(rcpt.address), _params(rcpt.params)))
            if refusal is None:
                out.add(Command.RCPT, frame)
                sent.add(_rcpt_key(rcpt))
                continue
            marks = refused_values(refusal)
            out.values.update(marks)
            out.add(Command.RCPT, frame, ignored=True)
            for name in marks:
                out.values.pop(name, None)

    async def _content(self, client: MilterClient, out: _Commands, message: Message) -> Answer:
        agreed = out.agreed
        if agreed.sends(Command.HEADER):
            leading_space = agreed.leading_space
            for header in message.headers:
                value = header.raw_value if leading_space else header.value
                out.add(
                    Command.HEADER,
                    c.encode_header(_wire(header.name), _wire(value.replace("\r\n", "\n"))),
                )
        out.add(Command.EOH, _EOH)
        if not agreed.sends(Command.BODY):
            out.macros(Command.BODYEOB)
            return await out.step(end_of_message=True)
        chunks = message.iter_body(BODY_CHUNK)
        per_chunk_reply = agreed.replies_to(Command.BODY)
        chunk = next(chunks, None)
        while True:
            size = 0
            while chunk is not None:
                client.send_raw(c.body_head(len(chunk)))
                client.send_raw(chunk)
                if per_chunk_reply:
                    out.owed.append(Command.BODY)
                size += len(chunk)
                chunk = next(chunks, None)
                if per_chunk_reply or size >= _BODY_GROUP:
                    break
            last = chunk is None
            if last:
                out.macros(Command.BODYEOB)
            answer = await out.step(end_of_message=last)
            if last or answer.command is not None:
                return answer
            if answer.skipped:
                out.macros(Command.BODYEOB)
                return await out.step(end_of_message=True)

    # -- what comes back -----------------------------------------------------------------------

    def _decide(
        self, link: _Link, stage: str, answer: Answer, tx: Transaction | None
    ) -> Verdict | None:
        reply, command = answer.reply, answer.command
        session_wide = command in (Command.CONNECT, Command.HELO)
        verdict = milter_verdict(reply, command, self.name, end_of_message=stage == "message")
        if command is Command.UNKNOWN and not isinstance(reply, c.Shutdown | c.ConnFail):
            # The answer is for that one command; the milter's say on the session goes on.
            return verdict if verdict is not None and verdict.is_refusal else None
        if isinstance(reply, c.Accept):
            self._done(link, tx, session_wide)
        elif isinstance(reply, c.Discard):
            if session_wide or tx is None:
                link.discard_session = True
            else:
                link.discard_tx = tx.id
            self._done(link, tx, session_wide)
        elif isinstance(reply, c.Shutdown | c.ConnFail):
            link.done_session = True
            link.client.abandon()
        elif not isinstance(reply, c.Continue) and (command is not Command.RCPT or stage != "rcpt"):
            # A refusal ends this milter's say, except at RCPT: that refuses one recipient.
            self._done(link, tx, session_wide)
        if tx is not None and stage == "message":
            if verdict is None and not isinstance(reply, c.Discard):
                apply_actions(answer.actions, tx, self.name)
            word = "continue" if verdict is None else verdict.kind.value
            tx.set_result(
                self.name,
                word,
                reason=type(reply).__name__.lower(),
                response_bytes=link.client.response_size,
            )
        return verdict

    def _done(self, link: _Link, tx: Transaction | None, session_wide: bool) -> None:
        if session_wide or tx is None:
            link.done_session = True
        else:
            link.done_tx = tx.id


class _Commands:
    """A group of frames being built, encoded as they are added, each command preceded by
    its MACRO frame; `owed` lists the commands the milter answers, in order."""

    __slots__ = ("_session", "_values", "agreed", "client", "hostname", "ignored", "owed")

    def __init__(self, client: MilterClient, session: Session, hostname: str) -> None:
        assert client.agreed is not None
        self.client = client
        self.agreed = client.agreed
        self._session = session
        self.hostname = hostname
        self._values: dict[str, str] | None = None
        self.owed: list[Command] = []
        self.ignored: set[int] = set()
        """Positions in `owed` whose replies do not count (refused recipients)."""

    @property
    def values(self) -> dict[str, str]:
        """The macro values, worked out at the first MACRO frame (steps the milter declined
        need none)."""
        if self._values is None:
            self._values = session_values(self._session, self.hostname)
        return self._values

    def macros(self, command: Command) -> None:
        """The MACRO frame for `command`: the milter's own list for its stage, else Postfix's."""
        stage = STAGE_OF.get(command)
        if stage is None:
            return
        names = self.agreed.macro_lists.get(stage, POSTFIX_DEFAULTS[stage])
        frame = macro_frame(command.value, names, self.values)
        if frame is not None:
            self.client.send_raw(frame)

    def add(self, command: Command, frame: bytes, *, ignored: bool = False) -> None:
        """Add a command (encoded; with its macros) if the milter wants it; with `ignored`,
        its reply does not count."""
        agreed = self.agreed
        if not agreed.sends(command):
            return
        self.macros(command)
        self.client.send_raw(frame)
        if agreed.replies_to(command):
            if ignored:
                self.ignored.add(len(self.owed))
            self.owed.append(command)

    async def step(self, *, end_of_message: bool = False) -> Answer:
        """Send what was added; the milter's answer. Starts a new group."""
        owed, self.owed = self.owed, []
        ignored, self.ignored = frozenset(self.ignored), set()
        return await self.client.exchange(owed, end_of_message=end_of_message, ignored=ignored)


_EOH = c.encode(c.EndOfHeaders())
_DATA = c.encode(c.Data())
_ABORT = c.encode(c.Abort())


def _rcpt_key(recipient: Address) -> tuple[str, tuple[str, ...]]:
    # By value: the transaction may hold a copy of the Address the milter was told of, and an
    # id() can be reused by a new object once the old one is gone.
    return recipient.address, tuple(recipient.params)


def _angle(address: str) -> bytes:
    return _wire(f"<{address}>")


def _params(params: list[str]) -> tuple[bytes, ...]:
    return tuple(_wire(p) for p in params)


def _connect_frame(session: Session) -> c.Connect:
    name = _wire(session.client_name or f"[{session.client_ip}]")
    ip = session.client_ip
    if not ip:
        return c.Connect(name, b"U")
    if ":" in ip:
        return c.Connect(name, b"6", session.client_port, _wire(ip))
    return c.Connect(name, b"4", session.client_port, _wire(ip))
