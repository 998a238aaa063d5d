"""Option negotiation for the milter listener: ask the MTA only for what the plugins need."""

from __future__ import annotations

import weakref

from mailgate.milter.codec import MilterProtocolError, OptNeg, OptNegReply
from mailgate.milter.options import Negotiated
from mailgate.milter.protocol import (
    ALL_ACTIONS,
    MAX_VERSION,
    MIN_VERSION,
    Action,
    MacroStage,
    Step,
)
from mailgate.pipeline import Pipeline

MACRO_REQUESTS: tuple[tuple[MacroStage, bytes], ...] = (
    (
        MacroStage.CONNECT,
        b"j _ {daemon_name} {daemon_addr} {client_addr} {client_port} {client_ptr}",
    ),
    (MacroStage.HELO, b"{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}"),
    (MacroStage.ENVFROM, b"i {auth_type} {auth_authen} {auth_author} {mail_addr}"),
    (MacroStage.ENVRCPT, b"i {rcpt_addr}"),
    (MacroStage.DATA, b"i"),
    (MacroStage.EOH, b"i"),
    (MacroStage.EOM, b"i"),
)
"""The macros the listener asks for at each stage (when the MTA offers SMFIF_SETSYMLIST)."""

REFUSED_RCPT_MACROS = b"i {rcpt_addr} {rcpt_host} {rcpt_mailer}"
"""The RCPT macros when refused recipients are asked for too (SMFIP_RCPT_REJ): Postfix marks
them with ``{rcpt_mailer}`` = ``error`` and puts the status and text in the other two."""


def wanted_steps(pipeline: Pipeline) -> Step:
    """The protocol flags the listener would like for this plugin chain.

    The envelope steps always come (plugins read the session and envelope at later stages),
    but without a reply when no plugin may answer there for a milter session
    (`Pipeline.answers`: relay control, for one, leaves milter recipients to the MTA).
    Headers and body come only when a plugin with `on_headers`/`on_message` declares it reads
    them (``reads``: `Pipeline.reads`); EOH and DATA only when a plugin has a hook there; the
    recipients the MTA refused (``RCPT_REJ``) only when a plugin has `on_rcpt_refused`;
    unknown SMTP commands only when a plugin has `on_unknown`. End of message always comes:
    modifications (add a header, a recipient) and the final verdict are sent then, content or
    not.
    """
    steps = Step.NR_HDR | Step.NR_BODY | Step.HDR_LEADSPC
    if not pipeline.implements("on_unknown"):
        steps |= Step.NOUNKNOWN | Step.NR_UNKN
    for hook, flag in (
        ("on_connect", Step.NR_CONN),
        ("on_helo", Step.NR_HELO),
        ("on_mail", Step.NR_MAIL),
        ("on_rcpt", Step.NR_RCPT),
    ):
        if not pipeline.answers(hook, "milter"):
            steps |= flag
    if pipeline.implements("on_rcpt_refused"):
        steps |= Step.RCPT_REJ
    if not pipeline.implements("on_data"):
        steps |= Step.NODATA
    if not pipeline.implements("on_headers"):
        steps |= Step.NOEOH
    if not pipeline.reads("body"):
        steps |= Step.NOBODY
    if not pipeline.reads("headers"):
        steps |= Step.NOHDRS
    return steps


_agreed: weakref.WeakKeyDictionary[Pipeline, dict[OptNeg, tuple[Negotiated, OptNegReply]]]
_agreed = weakref.WeakKeyDictionary()
"""Negotiation results per plugin chain and offer: an MTA makes the same offer on every
connection, and working it out again (enum flag arithmetic) costs ~40 µs per connection."""


def negotiate(offer: OptNeg, pipeline: Pipeline) -> tuple[Negotiated, OptNegReply]:
    """Answer the MTA's OPTNEG with only what it offered; raise if its version is unusable."""
    known = _agreed.get(pipeline)
    if known is None:
        known = _agreed.setdefault(pipeline, {})
    result = known.get(offer)
    if result is None:
        result = known[offer] = _negotiate(offer, pipeline)
    return result


def _negotiate(offer: OptNeg, pipeline: Pipeline) -> tuple[Negotiated, OptNegReply]:
    if offer.version < MIN_VERSION:
        raise MilterProtocolError(f"milter protocol version {offer.version} is not supported")
    version = min(offer.version, MAX_VERSION)
    actions = Action(offer.actions) & ALL_ACTIONS
    protocol = wanted_steps(pipeline) & Step(offer.protocol)
    requests: dict[MacroStage, bytes] = {}
    if actions & Action.SETSYMLIST:
        refused = bool(protocol & Step.RCPT_REJ)
        requests = {
            stage: REFUSED_RCPT_MACROS if refused and stage is MacroStage.ENVRCPT else names
            for stage, names in MACRO_REQUESTS
        }
    lists = {stage: tuple(names.decode("ascii").split()) for stage, names in requests.items()}
    agreed = Negotiated(version, actions, protocol, lists)
    macros = tuple((int(stage), names) for stage, names in requests.items())
    return agreed, OptNegReply(version, int(actions), int(protocol), macros)
