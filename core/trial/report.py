"""Describing a trial: text for a terminal, a JSON document for scripts."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from mailgate import modifications as m
from mailgate.pipeline import CallStatus, ErrorPolicy, HookCall, error_verdict
from mailgate.trial.inputs import (
    LISTENER_NAME,
)
from mailgate.trial.run import Stage, Trial
from mailgate.verdict import Verdict


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
        held = f"would be held in {trial.limits.quarantine}"
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
