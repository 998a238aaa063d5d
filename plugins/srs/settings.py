"""The settings of the `srs` plugin: the keys of ``conf.d/NN-srs.toml``."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Annotated, Literal

from mailgate.config import Check
from mailgate.expressions import Expression
from mailgate.plugins.rewrite.lookup import is_domain
from mailgate.plugins.srs.codec import SrsCodec

Domain = Annotated[str, Check(is_domain, 'a domain such as "example.com"')]


@dataclass(slots=True)
class SrsSettings:
    """The SRS domain, the secrets, and which mail is forwarded with an SRS sender."""

    domain: Domain
    """The SRS domain: forwarded senders become ``SRS0=...@domain``; bounces to it are reversed."""
    secrets: list[str] = field(default_factory=list)
    """The secrets: the first signs new addresses, every one is accepted (key rotation)."""
    secrets_file: pathlib.Path | None = None
    """A file of secrets, one a line, as postsrsd reads it; they follow those of `secrets`."""
    hash_length: int = 4
    """Base64 letters of the HMAC in a new address."""
    hash_min_length: int | None = None
    """The fewest letters accepted when reversing; default: `hash_length`."""
    max_age_days: int = 21
    """Days an SRS0 address stays valid for bounces."""
    separator: Literal["=", "+", "-"] = "="
    """The character after ``SRS0``/``SRS1`` in new addresses (postsrsd's ``-a``)."""
    forward: bool = True
    """Give forwarded mail an SRS sender (at the end of data)."""
    forward_when: Expression = field(default_factory=lambda: Expression("true"))
    """Which forwarded mail gets an SRS sender, asked at the end of data (recipients final)."""
    local_domains: list[Domain] = field(default_factory=list)
    """Our own recipient domains: mail only for them is not leaving, so it keeps its sender."""
    exclude_sender_domains: list[Domain] = field(default_factory=list)
    """Senders in these domains are never rewritten (domains whose SPF already covers us)."""
    reverse: bool = True
    """Reverse recipients in `domain` that are SRS addresses (at RCPT); refuse invalid ones."""
    srs: SrsCodec = field(init=False, repr=False)
    """The codec, built at load."""

    def __post_init__(self) -> None:
        secrets = list(self.secrets)
        if self.secrets_file is not None:
            secrets += read_secrets(self.secrets_file)
        if not secrets:
            raise ValueError("secrets: give at least one secret (secrets or secrets_file)")
        if any(not s for s in self.secrets):
            raise ValueError("secrets: a secret may not be empty")
        if self.max_age_days < 1:
            raise ValueError("max_age_days: at least 1")
        hash_min = self.hash_length if self.hash_min_length is None else self.hash_min_length
        if not 1 <= self.hash_length <= 27:
            raise ValueError("hash_length: 1 to 27 (the letters of a SHA-1 in base64)")
        if not 1 <= hash_min <= self.hash_length:
            raise ValueError("hash_min_length: 1 to hash_length")
        self.srs = SrsCodec(
            tuple(secrets),
            self.domain.rstrip(".").lower(),
            hash_length=self.hash_length,
            hash_min=hash_min,
            max_age=self.max_age_days,
            separator=self.separator,
        )


def read_secrets(path: pathlib.Path) -> list[str]:
    """The secrets in `path`, one a line (blank lines skipped); `ValueError` names the key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"secrets_file: cannot read {path}: {exc}") from None
    # As postsrsd: the line as it is, without its line ending (spaces belong to the secret).
    secrets = [line for line in text.splitlines() if line]
    if not secrets:
        raise ValueError(f"secrets_file: {path} holds no secret")
    return secrets
