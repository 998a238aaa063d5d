"""``mailgate try``: run one message through the configured plugin chain, offline, and report.

The message goes through the same stages, in the same order and under the same rules as on the
SMTP listener (or, with ``--ingress milter``, the milter listener): connect, HELO, MAIL, one
RCPT per recipient (a refused recipient is not added), DATA, end of headers, end of data, then
``on_outcome`` and ``on_disconnect``. A refusal at any stage ends the run, as the client would
see it. The plugins are the real ones, so clamd, spamd and external milters are contacted; only
the downstream is not: an accepted message is reported as "would relay to ...".

Every plugin call is recorded through the pipeline's observers (`mailgate.pipeline.HookCall`):
called, skipped (its ``when`` was false) or failed (and the ``on_error`` policy that applied),
its answer, its changes and its time.
"""

from __future__ import annotations

import dataclasses
import email.utils
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mailgate import modifications as m
from mailgate.egress import Reply
from mailgate.loader import Config
from mailgate.message import Header, Message, parse_header_block
from mailgate.pipeline import CallStatus, ErrorPolicy, HookCall, Pipeline, error_verdict
from mailgate.session import Address, Session, Transaction
from mailgate.smtp import replies
from mailgate.smtp.data import DataReader
from mailgate.smtp.settings import SmtpListenerSettings
from mailgate.smtp.trace import PROTOCOL_NOTE, count_received, protocol_name, received_header
from mailgate.verdict import Verdict, VerdictKind

Ingress = Literal["smtp", "milter"]
LISTENER_NAME = "try"
"""``session.listener`` (``listener`` in expressions) during a trial."""

EXIT_ACCEPTED = 0
"""Accepted, discarded or quarantined: the client hears a 2xx."""
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_TEMPFAIL = 4
EXIT_REJECT = 5

_TLS_VERSION = "TLSv1.3"
_TLS_CIPHER = "TLS_AES_256_GCM_SHA384"
_UNLIMITED = 1 << 62
_CHUNK = 1 << 16


class UsageError(Exception):
    """The command line or the message cannot make a trial (exit status 2)."""


# -- what goes in ----------------------------------------------------------------------------


@dataclass(slots=True)
class Client:
    """The connection the trial pretends to come from."""

    ip: str = "127.0.0.1"
    helo: str = "localhost"
    auth_login: str = ""
    tls: bool = False
    ingress: Ingress = "smtp"


@dataclass(slots=True)
class Envelope:
    """Sender and recipients, and where each came from (an option or a header)."""

    sender: str
    recipients: list[str]
    sender_from: str = "--from"
    recipients_from: str = "--rcpt"


@dataclass(slots=True)
class Limits:
    """What the ingress would check and add: taken from the configured listener."""

    hostname: str
    listener: SmtpListenerSettings
    relay: str
    quarantine_dir: str


def read_message(source: str) -> bytes:
    """The message in file `source` (``-``: standard input), in SMTP's CRLF form.

    A file on disk usually has LF line ends; each becomes CRLF, as a mail client would send
    it. A bare CR is left alone, so the listener's own rule for it applies.
    """
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return crlf if not crlf or crlf.endswith(b"\r\n") else crlf + b"\r\n"


def header_addresses(raw: bytes, *names: str) -> list[str]:
    """The addresses in the message's headers `names` (``From``, ``To``, ``Cc``), in order."""
    head = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    wanted = {n.lower() for n in names}
    values = [h.value for h in parse_header_block(head) if h.name.strip().lower() in wanted]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def envelope(raw: bytes, sender: str | None, recipients: list[str]) -> Envelope:
    """The envelope: the options where given, else the From and To/Cc headers."""
    env = Envelope(sender or "", list(recipients))
    if sender is None:
        found = header_addresses(raw, "From")
        if not found:
            raise UsageError("no --from and no From: header to take the sender from")
        env.sender, env.sender_from = found[0], "From header"
    if not recipients:
        env.recipients = header_addresses(raw, "To", "Cc")
        env.recipients_from = "To/Cc headers"
        if not env.recipients:
            raise UsageError("no --rcpt and no To: or Cc: header to take recipients from")
    return env


def limits(config: Config, ingress: Ingress) -> Limits:
    """The first listener's settings (of the `ingress` type, when there is one) and the relay."""
    smtp = next((lc.settings for lc in config.listeners if lc.type == "smtp"), None)
    settings = smtp if isinstance(smtp, SmtpListenerSettings) else SmtpListenerSettings()
    if ingress == "milter":
        # Postfix enforces its own limits before a milter sees anything.
        settings = SmtpListenerSettings(
            max_message_size=_UNLIMITED,
            max_line_length=_UNLIMITED,
            max_header_size=_UNLIMITED,
            max_recipients=_UNLIMITED,
            bare_line_endings="normalize",
            add_received=False,
            max_received=0,
        )
    hostname = settings.hostname or config.mailgate.hostname or socket.getfqdn()
    return Limits(hostname, settings, config.relay.address, config.relay.quarantine_dir)


# -- what comes out --------------------------------------------------------------------------


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


# -- the run ---------------------------------------------------------------------------------


class TrialRun:
    """Drives one message through a `Pipeline` the way the configured ingress would."""

    def __init__(self, pipeline: Pipeline, trial: Trial, raw: bytes) -> None:
        self.pipeline = pipeline
        self.trial = trial
        self.raw = raw
        self.early: Verdict | None = None
        pipeline.observers.append(trial.observe)
        for p in pipeline.plugins:
            trial.policies[p.name] = p.on_error.value
            source = getattr(p.when, "source", None)
            if source is not None:
                trial.conditions[p.name] = str(source)

    @property
    def smtp(self) -> bool:
        return self.trial.client.ingress == "smtp"

    async def run(self) -> Trial:
        """Run every stage until one ends the run; then `on_outcome` and `on_disconnect`."""
        session = self.new_session()
        self.trial.session = session
        try:
            await self.connect(session)
            await self.helo(session)
            tx = await self.mail(session)
            await self.recipients(session, tx)
            await self.data(session, tx)
            message_verdict = await self.read_message(session, tx)
            await self.end_of_data(session, tx, message_verdict)
        except _Stop:
            pass
        except Exception as exc:  # a misbehaving plugin: the listener answers "try later"
            self.finish("tempfailed", replies.LOCAL_ERROR, f"{type(exc).__name__}: {exc}")
        await self.wrap_up(session)
        return self.trial

    def new_session(self) -> Session:
        """The session an ingress would make for the client described by ``--client`` etc."""
        c = self.trial.client
        session = Session(client_ip=c.ip, listener=LISTENER_NAME, ingress=c.ingress)
        session.auth_login = c.auth_login
        if c.tls:
            session.tls, session.tls_version, session.tls_cipher = True, _TLS_VERSION, _TLS_CIPHER
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
        verdict = await self.pipeline.connect(session)
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
        verdict = await self.pipeline.helo(session, name)
        if verdict is not None and verdict.is_refusal:
            self.refuse(stage, verdict)
        session.helo = name
        stage.reply = Reply(250, "", self.trial.limits.hostname).smtp_reply()

    async def mail(self, session: Session) -> Transaction:
        sender = self.trial.envelope.sender
        stage = self.trial.begin("mail", f"<{sender}>")
        tx = Transaction(sender=Address(sender))
        if self.smtp:
            tx.notes[PROTOCOL_NOTE] = protocol_name(
                esmtp=True, tls=session.tls, authenticated=bool(session.auth_login), smtputf8=False
            )
        verdict = await self.pipeline.mail(session, tx)
        if verdict is not None and verdict.is_refusal:
            self.refuse(stage, verdict)
        self.trial.transaction = tx
        self.early = _early(verdict)
        stage.reply = replies.SENDER_OK.smtp_reply()
        return tx

    async def recipients(self, session: Session, tx: Transaction) -> None:
        """One RCPT per recipient; the run ends if none is accepted."""
        last: Verdict | None = None
        for address in self.trial.envelope.recipients:
            last = await self.rcpt(session, tx, Address(address)) or last
        if not tx.recipients:
            # The client hears each refusal; the last one stands for the run.
            verdict = last or Verdict.reject(503, "5.5.1", "Need RCPT command")
            reason = verdict.reason or "no recipient accepted"
            self.finish(_refusal_outcome(verdict), replies.from_verdict(verdict), reason)
            raise _Stop

    async def rcpt(self, session: Session, tx: Transaction, recipient: Address) -> Verdict | None:
        """Offer one recipient; return the refusal, if it was refused."""
        stage = self.trial.begin("rcpt", f"<{recipient.address}>")
        if self.smtp and len(tx.recipients) >= self.trial.limits.listener.max_recipients:
            return self.refuse_recipient(stage, recipient, replies.TOO_MANY_RECIPIENTS)
        verdict = await self.pipeline.rcpt(session, tx, recipient)
        if verdict is not None and verdict.kind is VerdictKind.DISCONNECT:
            self.refuse(stage, verdict)
        if verdict is not None and verdict.is_refusal:
            self.refuse_recipient(stage, recipient, replies.from_verdict(verdict))
            return verdict
        tx.recipients.append(recipient)
        self.early = self.early or _early(verdict)
        stage.reply = replies.RECIPIENT_OK.smtp_reply()
        return None

    def refuse_recipient(self, stage: Stage, recipient: Address, reply: Reply) -> Verdict:
        stage.reply = reply.smtp_reply()
        self.trial.refused.append((recipient.address, stage.reply))
        return replies.to_verdict(reply, reason="recipient refused")

    async def data(self, session: Session, tx: Transaction) -> None:
        stage = self.trial.begin("data")
        verdict = await self.pipeline.data(session, tx)
        if verdict is not None and verdict.is_refusal:
            self.refuse(stage, verdict)
        stage.reply = replies.START_DATA.smtp_reply()

    async def read_message(self, session: Session, tx: Transaction) -> Verdict | None:
        """Read the data as the listener would; `on_headers` once the header block is in.

        Returns the `on_headers` refusal, which (as on the wire) is answered at the end of data.
        """
        self.trial.begin("headers")
        reader = self.new_reader()
        headers: list[Header] | None = None
        verdict: Verdict | None = None
        data = dot_stuffed(self.raw)
        for start in range(0, len(data), _CHUNK):
            reader.feed(data[start : start + _CHUNK])
            if headers is None and reader.headers_complete and reader.problem is None:
                headers = reader.headers
                verdict = await self.headers(session, tx, headers)
        problem = reader.problem
        if problem is not None:
            reader.close()
            stage = self.trial.begin("message", "(refused by the listener: no plugin asked)")
            s = self.trial.limits.listener
            reply = replies.data_refused(
                problem,
                max_line=s.max_line_length,
                max_header=s.max_header_size,
                max_size=s.max_message_size,
            )
            self.refuse(stage, replies.to_verdict(reply, reason=problem.name), reply)
        tx.message = Message(headers or [], reader.body)
        return verdict

    def new_reader(self) -> DataReader:
        s = self.trial.limits.listener
        return DataReader(
            max_line_length=s.max_line_length,
            max_header_size=s.max_header_size,
            max_size=s.max_message_size,
            normalize_bare_line_endings=s.bare_line_endings == "normalize",
            spool_threshold=s.spool_threshold,
        )

    async def headers(
        self, session: Session, tx: Transaction, headers: list[Header]
    ) -> Verdict | None:
        """The hop count, our Received: header at the top, then `on_headers`."""
        s = self.trial.limits.listener
        if self.smtp and s.max_received and count_received(headers) > s.max_received:
            return replies.to_verdict(replies.TOO_MANY_HOPS, reason="mail loop")
        if self.smtp and s.add_received:
            headers.insert(0, received_header(session, tx, hostname=self.trial.limits.hostname))
        return await self.pipeline.headers(session, tx, list(headers))

    async def end_of_data(
        self, session: Session, tx: Transaction, header_verdict: Verdict | None
    ) -> None:
        """`on_message`, then the answer: refuse, discard, quarantine or relay."""
        if header_verdict is not None and header_verdict.is_refusal:
            self.refuse(self.trial.stages[-1], header_verdict)
        stage = self.trial.begin("message")
        verdict = await self.pipeline.message(session, tx)
        if verdict is None or verdict.kind is VerdictKind.ACCEPT:
            verdict = self.early or verdict
        if verdict is not None and verdict.is_refusal:
            self.refuse(stage, verdict)
        if verdict is not None and verdict.kind is VerdictKind.DISCARD:
            self.accept(stage, "discarded", verdict.reason)
        elif verdict is not None and verdict.kind is VerdictKind.QUARANTINE:
            if tx.quarantined is None:
                tx.quarantine(verdict.reason or "quarantined by plugin")
            self.accept(stage, "quarantined", tx.quarantined or "")
        elif tx.quarantined is not None:
            self.accept(stage, "quarantined", tx.quarantined)
        else:
            self.accept(stage, "accepted", verdict.reason if verdict is not None else "")

    def accept(self, stage: Stage, outcome: str, reason: str) -> None:
        stage.reply = replies.OK.smtp_reply()
        self.finish(outcome, replies.OK, reason)

    async def wrap_up(self, session: Session) -> None:
        """`on_outcome` with the final verdict (if a transaction began), then `on_disconnect`."""
        tx = self.trial.transaction
        if tx is not None:
            self.trial.begin("outcome")
            await self.pipeline.outcome(session, tx, final_verdict(self.trial))
        self.trial.begin("disconnect")
        await self.pipeline.disconnect(session)


def dot_stuffed(raw: bytes) -> bytes:
    """`raw` (CRLF lines) as DATA sends it: leading dots doubled, ended by ``.CRLF``."""
    stuffed = raw.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def _early(verdict: Verdict | None) -> Verdict | None:
    """A discard or quarantine before the end of data applies at the end (as on the wire)."""
    if verdict is not None and verdict.kind in (VerdictKind.DISCARD, VerdictKind.QUARANTINE):
        return verdict
    return None


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
    trial = Trial(client, env, limits(config, client.ingress))
    return await TrialRun(pipeline, trial, raw).run()


def write_message(trial: Trial, path: str) -> None:
    """Write the message as it would be delivered (headers as changed, then the body)."""
    message = trial.message
    assert message is not None, "write only what `Trial.delivered` says is there"
    with open(path, "wb") as f:
        for chunk in message.iter_bytes():
            f.write(chunk)


# -- describing it -----------------------------------------------------------------------------


def describe_modification(mod: m.Modification) -> str:
    """One change in words: ``add header X-Scanned: yes``."""
    match mod:
        case m.AddHeader(name, value):
            return f"add header {name}: {value}"
        case m.InsertHeader(index, name, value):
            return f"insert header at {index}: {name}: {value}"
        case m.ChangeHeader(name, occurrence, value):
            return f"change header {name} #{occurrence} to: {value}"
        case m.DeleteHeader(name, occurrence):
            return f"delete header {name} #{occurrence}"
        case m.ReplaceBody(body):
            size = _size(body)
            return "replace body" + (f" ({size} bytes)" if size is not None else "")
        case m.AddRecipient(address, params):
            return f"add recipient <{address}>" + "".join(f" {p}" for p in params)
        case m.DeleteRecipient(address):
            return f"delete recipient <{address}>"
        case m.ChangeSender(address, params):
            return f"change sender to <{address}>" + "".join(f" {p}" for p in params)
        case m.Quarantine(reason):
            return f"quarantine: {reason}"
    return repr(mod)


def modification_record(mod: m.Modification) -> dict[str, Any]:
    """One change as JSON: ``{"action": "add_header", "name": ..., "value": ...}``."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(mod):
        name, value = f.name, getattr(mod, f.name)
        if name == "body":
            fields["size"] = _size(value)
        else:
            fields[name] = list(value) if isinstance(value, tuple) else value
    return {"action": _snake(type(mod).__name__), "text": describe_modification(mod), **fields}


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _size(body: Any) -> int | None:
    if getattr(body, "closed", True):
        return None
    position = body.tell()
    size = int(body.seek(0, 2))
    body.seek(position)
    return size


def call_answer(trial: Trial, call: HookCall) -> str:
    """What a call came to: ``go on``, a verdict's reply, or the on_error policy's."""
    if call.status is CallStatus.SKIPPED:
        return f"skipped: when {trial.conditions.get(call.plugin, '')!r} is false"
    if call.status is CallStatus.FAILED:
        policy = trial.policies.get(call.plugin, "tempfail")
        verdict = error_verdict(ErrorPolicy(policy))
        then = verdict.smtp_reply() if verdict is not None else "go on"
        return f"failed: {call.error}; on_error = {policy} -> {then}"
    result = call.result
    if isinstance(result, Verdict):
        return f"{result.kind.value}: {result.smtp_reply()}" + _reason(result.reason)
    if isinstance(result, bool):
        return f"answered {result}"
    return "go on"


def _reason(reason: str) -> str:
    return f" ({reason})" if reason else ""


def final_answer(trial: Trial) -> str:
    """The last line a reader wants: what the client hears, and where the message goes."""
    reply = trial.reply.smtp_reply().replace("\r\n", " / ")
    tx = trial.transaction
    rcpts = ", ".join(f"<{r.address}>" for r in tx.recipients) if tx is not None else ""
    if trial.outcome == "accepted":
        where = "the MTA (milter client) would go on with the changes below"
        if trial.client.ingress == "smtp":
            where = f"would relay to {trial.limits.relay} (not contacted)"
        return f"accepted: {where} for {rcpts} ({reply})"
    if trial.outcome == "quarantined":
        held = f"would be held in {trial.limits.quarantine_dir}"
        return f"quarantined: {held} ({trial.reason}); the client hears {reply}"
    if trial.outcome == "discarded":
        return f"discarded: nothing is delivered{_reason(trial.reason)}; the client hears {reply}"
    return f"{trial.outcome} at {trial.decided_at}: {reply}{_reason(trial.reason)}"


def text_lines(trial: Trial, source: str) -> Iterator[str]:
    """The human report, line by line."""
    c, env = trial.client, trial.envelope
    yield f"mailgate try {source}: ingress {c.ingress}, listener {LISTENER_NAME!r}"
    tls = "TLS" if c.tls else "no TLS"
    auth = f"authenticated as {c.auth_login}" if c.auth_login else "not authenticated"
    yield f"client {c.ip}, helo {c.helo}, {tls}, {auth}"
    yield f"sender <{env.sender}> (from {env.sender_from})"
    rcpts = ", ".join(f"<{r}>" for r in env.recipients)
    yield f"recipients {rcpts} (from {env.recipients_from})"
    for stage in trial.stages:
        yield from stage_lines(trial, stage)
    yield ""
    yield "Result: " + final_answer(trial)
    for address, reply in trial.refused:
        yield f"  refused at RCPT: <{address}>: {reply}"
    yield from final_lines(trial)
    yield f"exit status {trial.exit_status}"


def stage_lines(trial: Trial, stage: Stage) -> Iterator[str]:
    """One stage: its calls, their changes, and the reply."""
    if not stage.calls and not stage.reply and stage.name in ("outcome", "disconnect"):
        return
    yield ""
    yield f"{stage.name} {stage.subject}".rstrip()
    if not stage.calls:
        yield "  (no plugin implements this hook)"
    for call in stage.calls:
        took = f"{call.seconds * 1000:.1f} ms" if call.status is not CallStatus.SKIPPED else "-"
        name = f"{call.plugin}.{call.hook}"
        yield f"  {call.status.value:<8} {name}  [{took}]  {call_answer(trial, call)}"
        for mod in call.modifications:
            yield f"           + {describe_modification(mod)}"
    if stage.reply:
        yield "  -> " + stage.reply.replace("\r\n", "\n     ")


def final_lines(trial: Trial) -> Iterator[str]:
    """The envelope and headers after every change."""
    tx = trial.transaction
    if tx is None:
        return
    yield ""
    yield "Final envelope:"
    yield f"  MAIL FROM:<{tx.sender.address}>" + "".join(f" {p}" for p in tx.sender.params)
    for r in tx.recipients:
        yield f"  RCPT TO:<{r.address}>" + "".join(f" {p}" for p in r.params)
    message = tx.message
    if message is None:
        return
    yield "Final headers:"
    for h in message.headers:
        yield f"  {h.name}:{h.raw_value}".replace("\r\n", "\n  ")
    yield f"  (body: {message.body_size} bytes)"


def json_document(trial: Trial, source: str) -> dict[str, Any]:
    """The whole report as one JSON-ready dict (``--json``)."""
    c, env, tx = trial.client, trial.envelope, trial.transaction
    message = trial.message
    return {
        "message": source,
        "ingress": c.ingress,
        "listener": LISTENER_NAME,
        "client": {"ip": c.ip, "helo": c.helo, "tls": c.tls, "auth_login": c.auth_login},
        "envelope_given": {
            "sender": env.sender,
            "sender_from": env.sender_from,
            "recipients": env.recipients,
            "recipients_from": env.recipients_from,
        },
        "stages": [stage_record(trial, s) for s in trial.stages],
        "result": {
            "outcome": trial.outcome,
            "stage": trial.decided_at,
            "reply": trial.reply.smtp_reply(),
            "code": trial.reply.code,
            "reason": trial.reason,
            "summary": final_answer(trial),
            "refused_recipients": [{"address": a, "reply": r} for a, r in trial.refused],
            "relay": trial.limits.relay if c.ingress == "smtp" else None,
        },
        "envelope": None
        if tx is None
        else {"sender": tx.sender.address, "recipients": [r.address for r in tx.recipients]},
        "headers": None
        if message is None
        else [{"name": h.name, "value": h.value} for h in message.headers],
        "body_size": None if message is None else message.body_size,
        "exit_status": trial.exit_status,
    }


def stage_record(trial: Trial, stage: Stage) -> dict[str, Any]:
    """One stage as JSON."""
    return {
        "stage": stage.name,
        "subject": stage.subject,
        "reply": stage.reply,
        "calls": [call_record(trial, call) for call in stage.calls],
    }


def call_record(trial: Trial, call: HookCall) -> dict[str, Any]:
    """One plugin call as JSON."""
    result = call.result
    verdict = None
    if isinstance(result, Verdict):
        verdict = {
            "kind": result.kind.value,
            "code": result.code,
            "status": result.status,
            "text": result.text,
            "reason": result.reason,
            "reply": result.smtp_reply(),
        }
    return {
        "plugin": call.plugin,
        "hook": call.hook,
        "status": call.status.value,
        "seconds": round(call.seconds, 6),
        "verdict": verdict,
        "error": call.error or None,
        "on_error": trial.policies.get(call.plugin) if call.status is CallStatus.FAILED else None,
        "when": trial.conditions.get(call.plugin),
        "answer": call_answer(trial, call),
        "modifications": [modification_record(mod) for mod in call.modifications],
    }
