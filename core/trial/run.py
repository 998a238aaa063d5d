"""Running a trial: the stages, in the order and under the rules of the ingress."""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.egress import MtaEgress, Reply
from mailgate.flow import FlowSettings, SessionFlow, Trace
from mailgate.loader import Config
from mailgate.message import Header, Message
from mailgate.pipeline import HookCall, Pipeline
from mailgate.session import Address, Session, Transaction
from mailgate.smtp import replies
from mailgate.smtp.data import DataProblem
from mailgate.smtp.trace import PROTOCOL_NOTE, protocol_name
from mailgate.trial.inputs import (
    CHUNK,
    EXIT_ACCEPTED,
    EXIT_REJECT,
    EXIT_TEMPFAIL,
    LISTENER_NAME,
    TLS_CIPHER,
    TLS_VERSION,
    Client,
    Envelope,
    Limits,
    first_bare_line_ending,
    limits,
)
from mailgate.verdict import Verdict, VerdictKind


@dataclass(slots=True)
class Stage:
    """One SMTP step of the trial: the plugin calls it made and the reply the client got."""

    name: str
    """``connect``, ``helo``, ``mail``, ``rcpt``, ``data``, ``headers``, ``message``,
    ``outcome``, ``disconnect``."""
    subject: str = ""
    """What the step was about: the HELO name, the sender, the recipient."""
    calls: list[HookCall] = field(default_factory=list)
    reply: str = ""
    """The reply the client would get ("" for outcome and disconnect)."""


@dataclass(slots=True)
class Trial:
    """Everything one run found: stages, the final answer, the final envelope and message."""

    client: Client
    envelope: Envelope
    limits: Limits
    policies: dict[str, str] = field(default_factory=dict)
    """``on_error`` of each plugin, by its name in the chain."""
    conditions: dict[str, str] = field(default_factory=dict)
    """The source of each plugin's ``when``, by name (plugins without one are absent)."""
    stages: list[Stage] = field(default_factory=list)
    outcome: str = ""
    """``accepted``, ``discarded``, ``quarantined``, ``rejected``, ``tempfailed`` or
    ``disconnected``."""
    reply: Reply = replies.OK
    """The final reply the client would see."""
    decided_at: str = ""
    """The stage whose answer ended the run (or ``message`` for an accepted one)."""
    reason: str = ""
    refused: list[tuple[str, str]] = field(default_factory=list)
    """Recipients refused at RCPT, with the reply each got."""
    session: Session | None = None
    transaction: Transaction | None = None

    def observe(self, call: HookCall, session: Session, tx: Transaction | None) -> None:
        """The pipeline observer: file `call` under the current stage."""
        self.stages[-1].calls.append(call)

    def begin(self, name: str, subject: str = "") -> Stage:
        """Open the next stage; calls observed from now on belong to it."""
        stage = Stage(name, subject)
        self.stages.append(stage)
        return stage

    @property
    def exit_status(self) -> int:
        """0 for a 2xx answer, 4 for a 4xx, 5 for a 5xx."""
        if self.reply.code >= 500:
            return EXIT_REJECT
        return EXIT_TEMPFAIL if self.reply.code >= 400 else EXIT_ACCEPTED

    @property
    def message(self) -> Message | None:
        """The message as plugins left it (None if the run ended before the data)."""
        return self.transaction.message if self.transaction is not None else None

    @property
    def delivered(self) -> bool:
        """True if the message would be relayed or held (what ``--output`` writes)."""
        return self.outcome in ("accepted", "quarantined") and self.message is not None


class _Stop(Exception):
    """The run ends here (the final answer is already in the `Trial`)."""


class TrialRun:
    """Drives one message through the same `SessionFlow` the configured ingress would use,
    with `MtaEgress` as the way out: nothing is relayed or stored."""

    def __init__(self, pipeline: Pipeline, trial: Trial, raw: bytes) -> None:
        self.pipeline = pipeline
        self.trial = trial
        self.raw = raw
        self.concluding: Verdict | None = None
        """`message_verdict`'s answer for a message that was accepted, held or discarded."""
        pipeline.observers.append(trial.observe)
        for p in pipeline.plugins:
            trial.policies[p.name] = p.on_error.value
            source = getattr(p.when, "source", None)
            if source is not None:
                trial.conditions[p.name] = str(source)
        listener = trial.limits.listener
        trace = None
        if self.smtp:
            trace = Trace(trial.limits.hostname, listener.add_received, listener.max_received)
        self.flow = SessionFlow(
            pipeline,
            self.new_session(),
            MtaEgress(),
            settings=FlowSettings(
                max_recipients=listener.max_recipients if self.smtp else 0,
                trace=trace,
                keep_message=True,
            ),
        )

    @property
    def smtp(self) -> bool:
        return self.trial.client.ingress == "smtp"

    async def run(self) -> Trial:
        """Run every stage until one ends the run; then the outcome and `on_disconnect`."""
        session = self.flow.session
        self.trial.session = session
        try:
            await self.connect(session)
            await self.helo(session)
            tx = await self.mail(session)
            await self.recipients(tx)
            await self.data()
            message_verdict = await self.read_message(tx)
            await self.end_of_data(tx, message_verdict)
        except _Stop:
            pass
        except Exception as exc:  # a misbehaving plugin: the listener answers "try later"
            self.finish("tempfailed", replies.LOCAL_ERROR, f"{type(exc).__name__}: {exc}")
        await self.wrap_up()
        return self.trial

    def new_session(self) -> Session:
        """The session an ingress would make for the client described by ``--client`` etc."""
        c = self.trial.client
        session = Session(client_ip=c.ip, listener=LISTENER_NAME, ingress=c.ingress)
        session.auth_login = c.auth_login
        if c.tls:
            session.tls, session.tls_version, session.tls_cipher = True, TLS_VERSION, TLS_CIPHER
        return session

    def finish(self, outcome: str, reply: Reply, reason: str = "") -> None:
        """Record the final answer."""
        t = self.trial
        t.outcome, t.reply, t.reason = outcome, reply, reason
        t.decided_at = t.stages[-1].name if t.stages else ""

    def refuse(self, stage: Stage, verdict: Verdict, reply: Reply | None = None) -> None:
        """End the run with `verdict` (its reply, unless `reply` says otherwise)."""
        answer = reply or replies.from_verdict(verdict)
        stage.reply = answer.smtp_reply()
        self.finish(_refusal_outcome(verdict), answer, verdict.reason)
        raise _Stop

    async def connect(self, session: Session) -> None:
        stage = self.trial.begin("connect", session.client_ip)
        verdict = await self.flow.open()
        host = self.trial.limits.hostname
        if verdict is not None and verdict.is_refusal:
            code = 554 if verdict.kind is VerdictKind.REJECT else 421
            self.refuse(stage, verdict, Reply(code, "", f"{host} {verdict.text}"))
        stage.reply = Reply(220, "", f"{host} {self.trial.limits.listener.greeting}").smtp_reply()

    async def helo(self, session: Session) -> None:
        name = self.trial.client.helo
        stage = self.trial.begin("helo", name)
        if not self.smtp:
            session.helo = name  # the milter listener knows it before calling on_helo
        verdict = await self.flow.helo(name)
        if verdict is not None and verdict.is_refusal:
            self.refuse(stage, verdict)
        stage.reply = Reply(250, "", self.trial.limits.hostname).smtp_reply()

    async def mail(self, session: Session) -> Transaction:
        sender = self.trial.envelope.sender
        stage = self.trial.begin("mail", f"<{sender}>")
        notes = {}
        if self.smtp:
            notes[PROTOCOL_NOTE] = protocol_name(
                esmtp=True, tls=session.tls, authenticated=bool(session.auth_login), smtputf8=False
            )
        verdict = await self.flow.mail(Address(sender), notes)
        if verdict is not None and verdict.is_refusal:
            self.refuse(stage, verdict)
        tx = self.flow.tx
        assert tx is not None
        self.trial.transaction = tx
        stage.reply = replies.SENDER_OK.smtp_reply()
        return tx

    async def recipients(self, tx: Transaction) -> None:
        """One RCPT per recipient; the run ends if none is accepted."""
        last: Verdict | None = None
        for address in self.trial.envelope.recipients:
            last = await self.rcpt(Address(address)) or last
        if not tx.recipients:
            # The client hears each refusal; the last one stands for the run.
            verdict = last or Verdict.reject(503, "5.5.1", "Need RCPT command")
            reason = verdict.reason or "no recipient accepted"
            self.finish(_refusal_outcome(verdict), replies.from_verdict(verdict), reason)
            raise _Stop

    async def rcpt(self, recipient: Address) -> Verdict | None:
        """Offer one recipient; return the refusal, if it was refused."""
        stage = self.trial.begin("rcpt", f"<{recipient.address}>")
        verdict = await self.flow.rcpt(recipient)
        if verdict is not None and verdict.kind is VerdictKind.DISCONNECT:
            self.refuse(stage, verdict)
        if verdict is not None and verdict.is_refusal:
            stage.reply = replies.from_verdict(verdict).smtp_reply()
            self.trial.refused.append((recipient.address, stage.reply))
            return verdict
        stage.reply = replies.RECIPIENT_OK.smtp_reply()
        return None

    async def data(self) -> None:
        stage = self.trial.begin("data")
        verdict = await self.flow.data()
        if verdict is not None and verdict.is_refusal:
            self.refuse(stage, verdict)
        stage.reply = replies.START_DATA.smtp_reply()

    async def read_message(self, tx: Transaction) -> Verdict | None:
        """Read the data as the listener would; `on_headers` once the header block is in.

        Returns the `on_headers` refusal, which (as on the wire) is answered at the end of data.
        """
        self.trial.begin("headers")
        max_size = self.trial.limits.listener.max_message_size.value(self.flow.session, tx)
        reader = self.trial.limits.listener.new_data_reader(max_size=max_size)
        headers: list[Header] | None = None
        verdict: Verdict | None = None
        data = dot_stuffed(self.raw)
        for start in range(0, len(data), CHUNK):
            reader.feed(data[start : start + CHUNK])
            if headers is None and reader.headers_complete and reader.problem is None:
                headers = reader.headers
                verdict = await self.flow.headers(headers)
        problem = reader.problem
        if problem is not None:
            reader.close()
            stage = self.trial.begin("message", "(refused by the listener: no plugin asked)")
            s = self.trial.limits.listener
            reply = replies.data_refused(
                problem,
                max_line=s.max_line_length,
                max_header=s.max_header_size,
                max_size=max_size,
            )
            self.refuse(
                stage, replies.to_verdict(reply, reason=_problem_reason(problem, self.raw)), reply
            )
        tx.message = Message(headers or [], reader.body)
        return verdict

    async def end_of_data(self, tx: Transaction, header_verdict: Verdict | None) -> None:
        """`on_message` and which verdict wins (the flow's), then the answer."""
        if header_verdict is not None and header_verdict.is_refusal:
            self.refuse(self.trial.stages[-1], header_verdict)
        stage = self.trial.begin("message")
        verdict = await self.flow.message_verdict()
        if verdict is not None and verdict.is_refusal:
            self.refuse(stage, verdict)
        self.concluding = verdict
        if verdict is not None and verdict.kind is VerdictKind.DISCARD:
            self.accept(stage, "discarded", verdict.reason)
        elif tx.quarantined is not None:
            self.accept(stage, "quarantined", tx.quarantined)
        else:
            self.accept(stage, "accepted", verdict.reason if verdict is not None else "")

    def accept(self, stage: Stage, outcome: str, reason: str) -> None:
        stage.reply = replies.OK.smtp_reply()
        self.finish(outcome, replies.OK, reason)

    async def wrap_up(self) -> None:
        """The transaction's end through the flow (`on_outcome`, if one began), then the
        session's (`on_disconnect`)."""
        flow = self.flow
        if flow.tx is not None:
            self.trial.begin("outcome")
            if self.concluding is not None or self.trial.outcome == "accepted":
                await flow.conclude(self.concluding)
            elif self.trial.decided_at in ("data", "headers", "message"):
                await flow.finish(final_verdict(self.trial), self.trial.reply)
            else:
                await flow.abort(f"aborted: {self.trial.reason or self.trial.outcome}")
        self.trial.begin("disconnect")
        await flow.close()


def dot_stuffed(raw: bytes) -> bytes:
    """`raw` (CRLF lines) as DATA sends it: leading dots doubled, ended by ``.CRLF``."""
    stuffed = raw.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def _refusal_outcome(verdict: Verdict) -> str:
    if verdict.kind is VerdictKind.DISCONNECT:
        return "disconnected"
    return "rejected" if verdict.kind is VerdictKind.REJECT else "tempfailed"


def final_verdict(trial: Trial) -> Verdict:
    """The verdict `on_outcome` gets for the trial's final answer."""
    kinds = {"discarded": Verdict.discard, "quarantined": Verdict.quarantine}
    if trial.outcome in kinds:
        return kinds[trial.outcome](reason=trial.reason)
    if trial.outcome == "accepted":
        return Verdict.accept(reason=trial.reason or "delivered")
    return replies.to_verdict(trial.reply, reason=trial.reason or trial.decided_at)


async def run_trial(config: Config, client: Client, env: Envelope, raw: bytes) -> Trial:
    """Build the configured chain and run `raw` through it (`ConfigError` if it cannot)."""
    pipeline = config.pipeline()
    pipeline.client_names = None  # the client is made up: its name is not looked up
    trial = Trial(client, env, limits(config, client.ingress))
    return await TrialRun(pipeline, trial, raw).run()


def write_message(trial: Trial, path: str) -> None:
    """Write the message as it would be delivered (headers as changed, then the body)."""
    message = trial.message
    assert message is not None, "write only what `Trial.delivered` says is there"
    with open(path, "wb") as f:
        for chunk in message.iter_bytes():
            f.write(chunk)


def _problem_reason(problem: DataProblem, raw: bytes) -> str:
    """Why the listener refused the data, with the line for a bare CR or LF."""
    if problem is DataProblem.BARE_LINE_ENDING:
        line = first_bare_line_ending(raw)
        if line is not None:
            return f"bare CR or LF on line {line} of the message"
    return problem.name
