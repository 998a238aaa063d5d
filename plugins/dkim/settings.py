"""Settings of the ``dkim`` plugin (``conf.d/85-dkim.toml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mailgate.expressions import Expression
from mailgate.plugins.dkim.keys import PrivateKey, read_key

DEFAULT_SIGN_WHEN = 'authenticated || ip_in(client.ip, ["127.0.0.0/8", "::1/128"])'

DEFAULT_HEADERS = [
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Sender",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Message-ID",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
]
"""RFC 6376 5.4.1's recommended list, with List-Unsubscribe-Post (RFC 8058)."""

DEFAULT_OVERSIGN = ["From", "Reply-To", "Subject", "Date", "To", "Cc"]

# RFC 6376 5.4: never signed (they change in transit, or must not be seen).
_NEVER_SIGNED = {"return-path", "received", "comments", "keywords", "bcc", "resent-bcc"}
_NEVER_SIGNED |= {"dkim-signature"}

Canonicalization = Literal["relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple"]


@dataclass(slots=True)
class DkimKeySettings:
    """One signing key of a domain: ``[[keys."example.com"]]``."""

    selector: str
    """The selector: the key's public half is at ``<selector>._domainkey.<domain>``."""
    key_file: Path
    """The private key (PEM, RSA or Ed25519; the algorithm is read from the file)."""
    key: PrivateKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.selector or not all(p and p.isascii() for p in self.selector.split(".")):
            raise ValueError(f"selector {self.selector!r} is not a DNS label (or dotted labels)")
        try:
            self.key = read_key(self.key_file)
        except ValueError as exc:
            raise ValueError(f"key_file must be a DKIM private key: {exc}") from None


@dataclass(slots=True)
class DkimSettings:
    """Settings of the ``dkim`` plugin."""

    verify: bool = True
    """Verify the message's DKIM signatures (result in ``transaction.results["dkim"]``)."""
    max_signatures: int = 10
    """Signatures verified per message; the ones past it get ``policy`` (bounds the lookups)."""
    verify_timeout: float = 20.0
    """Seconds the key lookups of one message may take together; then ``temperror``."""
    unsigned_body: Literal["pass", "policy"] = "policy"
    """A signature with ``l=`` that leaves part of the body unsigned: ``policy`` (not a pass)
    or ``pass`` (RFC 6376's letter; anyone may then append content)."""
    sign_when: Expression = field(default_factory=lambda: Expression(DEFAULT_SIGN_WHEN))
    """Which mail is signed (CEL); only messages whose From domain has keys."""
    keys: dict[str, list[DkimKeySettings]] = field(default_factory=dict)
    """Per From domain, the keys to sign with (each adds a signature)."""
    headers: list[str] = field(default_factory=lambda: list(DEFAULT_HEADERS))
    """The headers signed when the message has them (From always)."""
    oversign: list[str] = field(default_factory=lambda: list(DEFAULT_OVERSIGN))
    """Headers signed once more than present, so none can be added after signing."""
    canonicalization: Canonicalization = "relaxed/relaxed"
    """``header/body`` canonicalization of mailgate's signatures."""

    def __post_init__(self) -> None:
        if self.verify_timeout <= 0:
            raise ValueError("verify_timeout must be a positive number of seconds")
        if self.max_signatures < 1:
            raise ValueError("max_signatures must be at least 1")
        lowered = {h.lower() for h in self.headers}
        if "from" not in lowered:
            raise ValueError("headers must include From (RFC 6376 5.4)")
        refused = sorted(lowered & _NEVER_SIGNED)
        if refused:
            raise ValueError(f"headers names {', '.join(refused)}, which must not be signed")
        if not {h.lower() for h in self.oversign} <= lowered:
            raise ValueError("oversign names headers that are not in headers")
        for domain, keys in self.keys.items():
            if not keys:
                raise ValueError(f"keys {domain!r} has no key")
            selectors = [k.selector.lower() for k in keys]
            if len(set(selectors)) != len(selectors):
                raise ValueError(f"keys {domain!r} names a selector twice")
        self.keys = {domain.lower().rstrip("."): keys for domain, keys in self.keys.items()}

    def keys_for(self, domain: str) -> tuple[str, list[tuple[str, PrivateKey]]]:
        """The signing domain and its keys: `domain`'s, or its nearest parent's that has keys
        (`domain` itself with no keys when none has)."""
        labels = domain.lower().rstrip(".").split(".")
        for i in range(len(labels) - 1):
            candidate = ".".join(labels[i:])
            keys = self.keys.get(candidate)
            if keys:
                return candidate, [(k.selector, k.key) for k in keys]
        return domain, []
