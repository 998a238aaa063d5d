"""The ``dmarc`` plugin: evaluate and enforce DMARC at the end of data (RFC 7489, DMARCbis).

It reads the header From and the results the ``spf`` and ``dkim`` plugins left, so its conf.d
file must come after theirs (``90-dmarc.toml``).
"""

from __future__ import annotations

import email.utils
import functools
import random
from dataclasses import dataclass, field
from typing import Literal

import dns.exception
import dns.resolver

from mailgate import Message, Session, Transaction, Verdict, hookimpl
from mailgate.config import Dynamic, Networks
from mailgate.dns import CacheMiss, DnsSettings, async_resolver, cached_answer, txt_strings
from mailgate.expressions import ip_in
from mailgate.logging import get_logger
from mailgate.plugins.dmarc.domains import normalize, organizational_domain
from mailgate.plugins.dmarc.evaluation import (
    DkimSignature,
    Evaluation,
    OverrideReason,
    PolicyPublished,
    SpfIdentity,
    align,
    requested_policy,
    sample,
)
from mailgate.plugins.dmarc.record import DmarcRecord, RecordError, is_dmarc, parse_record

log = get_logger("mailgate.plugins.dmarc")

RESULT_KEY = "dmarc"
"""The key of this plugin's entry in ``transaction.results``."""

EVALUATION_NOTE = "dmarc_evaluation"
"""The key of the `Evaluation` in ``transaction.notes``, for the reports."""

LocalOverride = Literal[
    "", "forwarded", "trusted_forwarder", "mailing_list", "local_policy", "other"
]
"""What an ``override`` rule may give: an RFC 7489 override type, or "" for none."""


@dataclass(slots=True)
class DmarcSettings:
    """Settings of the ``dmarc`` plugin (``conf.d/90-dmarc.toml``)."""

    temperror: Literal["accept", "tempfail"] = "accept"
    """A DNS failure during the check: ``accept`` (as opendmarc) or ``tempfail`` (451 4.7.1)."""
    never_enforce: list[str] = field(default_factory=list)
    """From domains (and their subdomains) whose policy is recorded but never applied."""
    trusted_forwarders: Networks = field(default_factory=list)
    """Clients whose failing mail is delivered (override ``trusted_forwarder``)."""
    override: Dynamic[LocalOverride] = field(default=Dynamic.fixed(""))
    """Rules giving an override type for a failing message, or "" (apply the policy)."""
    skip_networks: Networks = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    """Clients not checked (result ``skipped``), as in the spf plugin; authenticated ones too."""
    sampling_seed: int | None = None
    """Seed of the ``pct`` sampling; unset: the system's randomness."""

    def __post_init__(self) -> None:
        bad = [d for d in self.never_enforce if not _is_domain(d)]
        if bad:
            raise ValueError(f"never_enforce domain names, and {bad[0]!r} is not one")


def _is_domain(value: str) -> bool:
    return "@" not in value and bool(normalize(value))


class _TempError(Exception):
    """A lookup failed for now (timeout, SERVFAIL, no server answered)."""


class Dmarc:
    """Checks that the header From domain is aligned with a passing SPF or DKIM identity, and
    applies the domain's policy to mail that is not."""

    Settings = DmarcSettings
    reads: frozenset[str] = frozenset({"headers"})
    """It needs the From: header; the body is DKIM's business."""

    def __init__(
        self, settings: DmarcSettings | None = None, *, dns: DnsSettings | None = None
    ) -> None:
        self.settings = settings or DmarcSettings()
        self.resolver = async_resolver(dns or DnsSettings())
        self._random = random.Random(self.settings.sampling_seed)
        self._never = tuple(normalize(d) for d in self.settings.never_enforce)
        organizational_domain("example.com")  # load the public suffix list now, not on mail

    @hookimpl
    async def on_message(
        self, session: Session, transaction: Transaction, message: Message
    ) -> Verdict | None:
        """Evaluate DMARC, record the evaluation, and reject or quarantine as the policy says."""
        skipped = self._skip_reason(session)
        if skipped:
            transaction.set_result(RESULT_KEY, "skipped", reason=skipped)
            return None
        evaluation = _inputs(session, transaction)
        author, problem = header_from_domain(message)
        evaluation.header_from = author
        if problem:
            evaluation.result, evaluation.reason = "permerror", problem
        else:
            try:
                await self._evaluate(session, transaction, evaluation)
            except _TempError as exc:
                evaluation.result, evaluation.reason = "temperror", str(exc)
                evaluation.disposition = "none"
        _record(transaction, evaluation)
        _log(evaluation)
        return self._verdict(evaluation)

    def _skip_reason(self, session: Session) -> str:
        if session.auth_login:
            return "authenticated"
        if ip_in(session.client_ip, self.settings.skip_networks):
            return "skip_networks"
        return ""

    async def _evaluate(self, session: Session, tx: Transaction, evaluation: Evaluation) -> None:
        domain = evaluation.header_from
        evaluation.organizational_domain = organizational_domain(domain)
        found = await self._discover(evaluation)
        if found is None:
            return
        where, record = found
        evaluation.policy_published = PolicyPublished.of(where, record)
        align(evaluation, record)
        at_org = where != domain
        nonexistent = False
        if evaluation.result == "fail" and at_org and record.np is not None:
            nonexistent = not await self._exists(domain)
        policy, source = requested_policy(
            record, at_organizational_domain=at_org, nonexistent=nonexistent
        )
        evaluation.policy, evaluation.policy_source = policy, source
        evaluation.reason = _explain(evaluation)
        if evaluation.result == "fail":
            evaluation.disposition = policy
            sample(evaluation, record, self._random.random)
            self._override(session, tx, evaluation)

    async def _discover(self, evaluation: Evaluation) -> tuple[str, DmarcRecord] | None:
        """RFC 7489 6.6.3: the record of the From domain, else of its organizational domain.
        None (with the result set) when no policy applies."""
        domain = evaluation.header_from
        where, texts = domain, await self._records(domain)
        if not texts and evaluation.organizational_domain != domain:
            where = evaluation.organizational_domain
            texts = await self._records(where)
        if not texts:
            evaluation.result, evaluation.reason = "none", f"no DMARC record for {domain}"
            return None
        if len(texts) > 1:
            evaluation.result = "none"
            evaluation.reason = f"{len(texts)} DMARC records at _dmarc.{where}: none applies"
            return None
        try:
            record = _parsed(texts[0])
        except RecordError as exc:
            evaluation.result = "permerror"
            evaluation.reason = f"DMARC record at _dmarc.{where}: {exc}"
            return None
        if record.notes:
            log.info("dmarc record has bad tags", domain=where, ignored=list(record.notes))
        return where, record

    async def _records(self, domain: str) -> list[str]:
        """The DMARC records (TXT starting with ``v=DMARC1``) at ``_dmarc.<domain>``."""
        name = f"_dmarc.{domain}"
        try:
            try:
                answer = cached_answer(self.resolver, name, "TXT")
            except CacheMiss:
                answer = await self.resolver.resolve(name, "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise _TempError(f"looking up {name} TXT: {exc}") from exc
        return list(_dmarc_texts(answer))

    async def _exists(self, domain: str) -> bool:
        """DMARCbis: a domain exists unless A, AAAA and MX all find nothing (NXDOMAIN or
        no data)."""
        for rdtype in ("A", "AAAA", "MX"):
            try:
                await self.resolver.resolve(domain, rdtype, search=False)
            except dns.resolver.NXDOMAIN:
                return False  # the name is not there, whatever the type
            except dns.resolver.NoAnswer:
                continue
            except dns.exception.DNSException as exc:
                raise _TempError(f"looking up {domain} {rdtype}: {exc}") from exc
            return True
        return False

    def _override(self, session: Session, tx: Transaction, evaluation: Evaluation) -> None:
        """Local policy: deliver a failing message the settings name, with the reason."""
        if evaluation.disposition == "none":
            return
        reason = self._override_reason(session, tx, evaluation.header_from)
        if reason is not None:
            evaluation.reasons.append(reason)
            evaluation.disposition = "none"

    def _override_reason(
        self, session: Session, tx: Transaction, domain: str
    ) -> OverrideReason | None:
        for never in self._never:
            if domain == never or domain.endswith(f".{never}"):
                return OverrideReason("local_policy", f"never_enforce {never}")
        if ip_in(session.client_ip, self.settings.trusted_forwarders):
            return OverrideReason("trusted_forwarder", session.client_ip)
        chosen = self.settings.override.value(session, tx)
        if chosen:
            return OverrideReason(chosen, "override rule")
        return None

    def _verdict(self, evaluation: Evaluation) -> Verdict | None:
        domain = evaluation.header_from
        if evaluation.result == "temperror" and self.settings.temperror == "tempfail":
            text = f"The DMARC policy of {domain} could not be checked, try again later"
            return Verdict.tempfail(451, "4.7.1", text, reason=evaluation.reason)
        if evaluation.disposition == "reject":
            text = f"Message rejected: it fails the DMARC policy of {domain}"
            return Verdict.reject(550, "5.7.1", text, reason=evaluation.reason)
        if evaluation.disposition == "quarantine":
            return Verdict.quarantine(reason=f"DMARC policy of {domain}: quarantine")
        return None


def header_from_domain(message: Message) -> tuple[str, str]:
    """The author domain (RFC 7489 3.1, 6.6.1) and "", or "" and why there is none: no From:,
    several From: fields, no address with a domain, or addresses in several domains."""
    return _author_domain(tuple(message.get_all("From")))


@functools.lru_cache(maxsize=4096)
def _author_domain(values: tuple[str, ...]) -> tuple[str, str]:
    """`header_from_domain` of these From: values (cached: the next message from the same
    author has the same field)."""
    if not values:
        return "", "no From: header"
    if len(values) > 1:
        return "", f"{len(values)} From: headers"
    addresses = [a for _, a in email.utils.getaddresses(values) if a]
    domains = {normalize(a.rpartition("@")[2]) for a in addresses if "@" in a}
    domains.discard("")
    if not domains:
        return "", "no address with a domain in From:"
    if len(domains) > 1:
        return "", f"From: has addresses in {len(domains)} domains"
    return domains.pop(), ""


@functools.lru_cache(maxsize=1024)
def _dmarc_texts(answer: dns.resolver.Answer) -> tuple[str, ...]:
    """The DMARC records of a TXT answer, remembered by the answer itself (the same cached
    answer comes with every message from a domain until its TTL runs out)."""
    texts = (text.decode("utf-8", "replace") for text in txt_strings(answer))
    return tuple(t for t in texts if is_dmarc(t))


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> DmarcRecord:
    """`parse_record`, remembered: the same record comes with every message from a domain."""
    return parse_record(text)


def _inputs(session: Session, tx: Transaction) -> Evaluation:
    """An evaluation with the envelope and the spf and dkim plugins' results filled in."""
    return Evaluation(
        source_ip=session.client_ip,
        header_from="",
        envelope_from=tx.sender.domain,
        spf=_spf_identity(tx),
        dkim=_dkim_signatures(tx),
    )


def _spf_identity(tx: Transaction) -> SpfIdentity | None:
    found = tx.results.get("spf")
    if found is None or not found.details.get("domain"):
        return None
    scope: Literal["mfrom", "helo"] = "helo" if found.details.get("identity") == "helo" else "mfrom"
    return SpfIdentity(normalize(str(found.details["domain"])), scope, found.result)


def _dkim_signatures(tx: Transaction) -> list[DkimSignature]:
    found = tx.results.get("dkim")
    if found is None:
        return []
    signatures = []
    for entry in found.details.get("auth_results", []):
        props = entry.get("properties", {})
        if entry.get("method") != "dkim" or not props.get("header.d"):
            continue
        domain = normalize(str(props["header.d"]))
        selector = str(props.get("header.s", ""))
        signatures.append(DkimSignature(domain, selector, str(entry.get("result", "none"))))
    return signatures


def _explain(evaluation: Evaluation) -> str:
    if evaluation.result == "pass":
        both = (("DKIM", evaluation.dkim_aligned), ("SPF", evaluation.spf_aligned))
        passed = [name for name, aligned in both if aligned == "pass"]
        return f"{' and '.join(passed)} aligned with {evaluation.header_from}"
    return f"no aligned SPF or DKIM pass for {evaluation.header_from}"


def _log(evaluation: Evaluation) -> None:
    """One line per evaluation, as opendmarc writes one: the domain, result and what was done."""
    log.info(
        "dmarc",
        domain=evaluation.header_from,
        result=evaluation.result,
        policy=evaluation.policy or "",
        disposition=evaluation.disposition,
        override=",".join(r.type for r in evaluation.reasons),
        reason=evaluation.reason,
    )


def _record(tx: Transaction, evaluation: Evaluation) -> None:
    domain = evaluation.header_from
    tx.notes[EVALUATION_NOTE] = evaluation
    tx.set_result(
        RESULT_KEY,
        evaluation.result,
        reason=evaluation.reason,
        auth_method="dmarc",
        auth_properties={"header.from": domain} if domain else {},
        domain=domain,
        policy=evaluation.policy or "",
        disposition=evaluation.disposition,
        override=",".join(r.type for r in evaluation.reasons),
        evaluation=evaluation.as_dict(),
    )
