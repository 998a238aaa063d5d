"""One DMARC evaluation (RFC 7489 6.6): what went in, what came out, and why.

`Evaluation` is the record the aggregate reports are built from (RFC 7489 Appendix C: ``row``,
``identifiers``, ``auth_results``, ``policy_published``); `evaluate` is the pure part of the
check, with no DNS, so it can be tested on its own.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from mailgate.plugins.dmarc.domains import aligned
from mailgate.plugins.dmarc.record import Alignment, DmarcRecord, Policy

DmarcResult = Literal["pass", "fail", "none", "temperror", "permerror"]
"""The DMARC result as Authentication-Results spells it (RFC 7489 11.2)."""

OverrideType = Literal[
    "forwarded", "sampled_out", "trusted_forwarder", "mailing_list", "local_policy", "other"
]
"""Why the disposition differs from the published policy (RFC 7489 Appendix C)."""

_WEAKER: dict[Policy, Policy] = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@dataclass(slots=True)
class SpfIdentity:
    """The SPF result DMARC used: the domain checked, its scope (``mfrom`` or ``helo``)."""

    domain: str
    scope: Literal["mfrom", "helo"]
    result: str


@dataclass(slots=True)
class DkimSignature:
    """One DKIM signature's result: the signing domain (``d=``) and selector (``s=``)."""

    domain: str
    selector: str
    result: str


@dataclass(slots=True)
class PolicyPublished:
    """The record that applied, as the aggregate report shows it; `domain` is where it was
    found (the From domain or its organizational domain)."""

    domain: str
    adkim: Alignment
    aspf: Alignment
    p: Policy
    sp: Policy
    pct: int
    np: Policy | None
    testing: bool
    fo: str = "0"
    rua: tuple[str, ...] = ()
    """Where aggregate reports go (``mailto:`` URIs, each may end in ``!size``)."""
    ruf: tuple[str, ...] = ()
    """Where failure reports go."""
    ri: int = 86400
    """The aggregate report interval asked for, in seconds."""

    @classmethod
    def of(cls, domain: str, record: DmarcRecord) -> PolicyPublished:
        """The report view of `record`, found at `domain` (``sp`` defaults to ``p``)."""
        sp = record.sp or record.p
        return cls(
            domain,
            record.adkim,
            record.aspf,
            record.p,
            sp,
            record.pct,
            record.np,
            record.testing,
            record.fo,
            record.rua,
            record.ruf,
            record.ri,
        )


@dataclass(slots=True)
class OverrideReason:
    """One ``policy_evaluated/reason`` of the report: a type and an optional comment."""

    type: OverrideType
    comment: str = ""


@dataclass(slots=True)
class Evaluation:
    """Everything an aggregate report row needs about one message, and the outcome."""

    source_ip: str
    header_from: str
    envelope_from: str
    spf: SpfIdentity | None
    dkim: list[DkimSignature]
    result: DmarcResult = "none"
    reason: str = ""
    policy_published: PolicyPublished | None = None
    policy: Policy | None = None
    """The policy that applied to this domain: ``p``, or ``sp``/``np`` for a subdomain."""
    policy_source: Literal["p", "sp", "np", ""] = ""
    dkim_aligned: Literal["pass", "fail"] = "fail"
    spf_aligned: Literal["pass", "fail"] = "fail"
    disposition: Policy = "none"
    reasons: list[OverrideReason] = field(default_factory=list)
    organizational_domain: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-ready) of this evaluation, as ``dataclasses.asdict`` makes it
        (every value here is immutable, so nothing needs its deep copies, nor a walk through
        values that hold no dataclass)."""
        plain = _fields(self)
        plain["spf"] = None if self.spf is None else _fields(self.spf)
        plain["dkim"] = [_fields(s) for s in self.dkim]
        published = self.policy_published
        plain["policy_published"] = None if published is None else _fields(published)
        plain["reasons"] = [_fields(r) for r in self.reasons]
        return plain


def _fields(value: Any) -> dict[str, Any]:
    """The fields of a dataclass of this module and their values, as they are."""
    names = _FIELDS[type(value)]
    return dict(zip(names, _GETTERS[type(value)](value), strict=True))


def align(evaluation: Evaluation, record: DmarcRecord) -> None:
    """Set the DKIM and SPF alignment results and the DMARC result: pass, fail, or temperror
    when nothing aligned passed but an aligned identifier could not be checked."""
    author = evaluation.header_from
    if any(s.result == "pass" and aligned(author, s.domain, record.adkim) for s in evaluation.dkim):
        evaluation.dkim_aligned = "pass"
    spf = evaluation.spf
    if spf is not None and spf.result == "pass" and aligned(author, spf.domain, record.aspf):
        evaluation.spf_aligned = "pass"
    passed = "pass" in (evaluation.dkim_aligned, evaluation.spf_aligned)
    evaluation.result = "pass" if passed else "fail"
    if not passed and _aligned_temperror(evaluation, record):
        # A lookup that may pass on the next try (a DKIM key or SPF record that timed out)
        # decides nothing yet: temperror, as DMARCbis and rspamd have it, so p=reject never
        # turns a passing DNS hiccup into a bounce. `[dmarc] temperror` chooses what follows.
        evaluation.result = "temperror"


def _aligned_temperror(evaluation: Evaluation, record: DmarcRecord) -> bool:
    """True when an identifier that would align could not be checked (``temperror``)."""
    author = evaluation.header_from
    dkim = any(
        s.result == "temperror" and aligned(author, s.domain, record.adkim) for s in evaluation.dkim
    )
    spf = evaluation.spf
    return dkim or (
        spf is not None and spf.result == "temperror" and aligned(author, spf.domain, record.aspf)
    )


def requested_policy(
    record: DmarcRecord, *, at_organizational_domain: bool, nonexistent: bool
) -> tuple[Policy, Literal["p", "sp", "np"]]:
    """The policy for the From domain: ``p`` where the record was published; for a subdomain
    of it (the record found at the organizational domain) ``np`` when the domain does not
    exist and ``np`` is given, else ``sp``, else ``p``."""
    if not at_organizational_domain:
        return record.p, "p"
    if nonexistent and record.np is not None:
        return record.np, "np"
    if record.sp is not None:
        return record.sp, "sp"
    return record.p, "p"


def sample(evaluation: Evaluation, record: DmarcRecord, draw: Callable[[], float]) -> None:
    """Apply ``pct`` (and ``t=y``): a failing message outside the sample gets the next policy
    down (reject -> quarantine -> none) and the override reason ``sampled_out``. `draw` gives a
    number in [0, 1); it is not called when every message is in the sample."""
    pct = record.sampling_pct
    if evaluation.disposition == "none" or pct >= 100:
        return
    if pct > 0 and draw() * 100 < pct:
        return
    evaluation.disposition = _WEAKER[evaluation.disposition]
    comment = "t=y" if record.testing else f"pct={record.pct}"
    evaluation.reasons.append(OverrideReason("sampled_out", comment))


_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls))
    for cls in (SpfIdentity, DkimSignature, PolicyPublished, OverrideReason, Evaluation)
}
"""The field names of the dataclasses an `Evaluation` holds, for `Evaluation.as_dict`."""
_GETTERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {
    cls: operator.attrgetter(*names) for cls, names in _FIELDS.items()
}
"""Each one's values, all at once, in the order of `_FIELDS` (each has more than one field)."""
