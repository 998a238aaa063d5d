"""Settings of the ``arc`` plugin (``conf.d/87-arc.toml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mailgate.expressions import Expression
from mailgate.plugins.dkim.keys import PrivateKey, read_key
from mailgate.plugins.dkim.settings import DEFAULT_HEADERS
from mailgate.plugins.dmarc.domains import normalize

DEFAULT_SEAL_HEADERS = [*DEFAULT_HEADERS, "DKIM-Signature"]
"""What the ARC-Message-Signature covers when the message has it: the DKIM plugin's list, and
the DKIM signatures (so a receiver sees which signatures the sealer saw)."""

# RFC 8617 4.1.2: never in an ARC-Message-Signature (deleted downstream, or ARC's own).
_NEVER_SEALED = {
    "authentication-results",
    "arc-authentication-results",
    "arc-message-signature",
    "arc-seal",
    "return-path",
    "received",
    "bcc",
    "resent-bcc",
}


@dataclass(slots=True)
class ArcSealSettings:
    """The key of mailgate's seals: ``[seal]`` with ``domain``, ``selector``, ``key_file``."""

    domain: str
    """The sealing domain (``d=``); the key's public half is at
    ``<selector>._domainkey.<domain>``, as for DKIM."""
    selector: str
    """The selector (``s=``)."""
    key_file: Path
    """The private key: an RSA key in PEM, as ``mailgate dkim keygen`` writes it."""
    key: PrivateKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        domain = normalize(self.domain)
        if not domain or "@" in self.domain:
            raise ValueError(f"domain {self.domain!r} is not a domain name")
        self.domain = domain
        if not self.selector or not all(p and p.isascii() for p in self.selector.split(".")):
            raise ValueError(f"selector {self.selector!r} is not a DNS label (or dotted labels)")
        try:
            self.key = read_key(self.key_file)
        except ValueError as exc:
            raise ValueError(f"key_file must be an RSA private key: {exc}") from None
        if self.key.algorithm != "rsa-sha256":
            raise ValueError(
                "key_file must be an RSA private key: dkimpy seals ARC with rsa-sha256 only "
                "(make one with mailgate dkim keygen --algorithm rsa)"
            )


@dataclass(slots=True)
class ArcSettings:
    """Settings of the ``arc`` plugin."""

    verify: bool = True
    """Validate the incoming chain (result in ``transaction.results["arc"]``)."""
    verify_timeout: float = 20.0
    """Seconds the key lookups of one chain may take together; then the chain fails."""
    trusted_sealers: list[str] = field(default_factory=list)
    """Domains (and their subdomains) whose seal, on a chain that passes, is trusted."""
    trust_when: Expression = field(default_factory=lambda: Expression("true"))
    """A further condition (CEL) for trusting the newest sealer, e.g. the client's network."""
    seal_when: Expression = field(default_factory=lambda: Expression("false"))
    """Which mail mailgate seals as an intermediary (CEL); needs ``[seal]``."""
    seal: ArcSealSettings | None = None
    """The sealing domain, selector and key."""
    authserv_id: str = ""
    """The authserv-id of the ARC-Authentication-Results; empty: this host's name."""
    headers: list[str] = field(default_factory=lambda: list(DEFAULT_SEAL_HEADERS))
    """The headers the ARC-Message-Signature covers when the message has them (From always)."""

    def __post_init__(self) -> None:
        if self.verify_timeout <= 0:
            raise ValueError("verify_timeout must be a positive number of seconds")
        bad = [d for d in self.trusted_sealers if "@" in d or not normalize(d)]
        if bad:
            raise ValueError(f"trusted_sealers domain names, and {bad[0]!r} is not one")
        self.trusted_sealers = [normalize(d) for d in self.trusted_sealers]
        if self.seal_when.source.strip() != "false" and self.seal is None:
            raise ValueError("seal_when needs a [seal] table (domain, selector, key_file)")
        lowered = {h.lower() for h in self.headers}
        if "from" not in lowered:
            raise ValueError("headers must include From (RFC 6376 5.4)")
        refused = sorted(lowered & _NEVER_SEALED)
        if refused:
            raise ValueError(f"headers names {', '.join(refused)}, which must not be sealed")
        if any(c in self.authserv_id for c in ' ;"()\\') or not self.authserv_id.isascii():
            raise ValueError("authserv_id must be a host name (no spaces, quotes or semicolons)")
