"""The keys of the differential corpus, made fresh for each test session: RSA keys by
opendkim-genkey (2048 bits, and one of 512), an Ed25519 key by PyNaCl."""

from __future__ import annotations

import base64
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from tests.peers.opendkim import DkimKey


@dataclass(frozen=True, slots=True)
class CorpusKeys:
    """Every key the corpus signs or seals with, by its job."""

    opendkim: DkimKey  # alpha.example.com, selector od: what the opendkim signers use
    rsa: DkimKey  # alpha.example.com, selector rsa: dkimpy's RSA signatures
    ed25519: DkimKey  # alpha.example.com, selector ed
    weak: DkimKey  # alpha.example.com, selector weak: 512 bits
    third_party: DkimKey  # beta.example.net, selector tp: a signer that is not the author
    strict: DkimKey  # strict.example.org, selector st (adkim=s)
    strict_sub: DkimKey  # sub.strict.example.org, selector st
    arc_origin: DkimKey  # arc.example.com, selector arc1: the first ARC hop
    arc_forwarder: DkimKey  # fwd.example.net, selector fwd1
    arc_list: DkimKey  # lists.example.org, selector list1

    @property
    def rsa_any_hash(self) -> DkimKey:
        """The rsa key under selector ``anyhash``, its record without ``h=sha256``."""
        record = self.rsa.record.replace("h=sha256; ", "")
        return DkimKey(self.rsa.domain, "anyhash", self.rsa.private_key, record)


def rsa_key(directory: Path, domain: str, selector: str, bits: int = 2048) -> DkimKey:
    """An RSA key by opendkim-genkey; the record as its ``.txt`` file spells it."""
    where = directory / domain
    where.mkdir(exist_ok=True)
    argv = ["opendkim-genkey", "-b", str(bits), "-d", domain, "-s", selector, "-D", str(where)]
    subprocess.run(argv, check=True, capture_output=True)
    record = "".join(re.findall(r'"([^"]*)"', (where / f"{selector}.txt").read_text()))
    return DkimKey(domain, selector, where / f"{selector}.private", record)


def ed25519_key(directory: Path, domain: str, selector: str) -> DkimKey:
    """An Ed25519 key (RFC 8463): the private file holds the base64 seed, as dkimpy reads it."""
    signing = nacl.signing.SigningKey.generate()
    path = directory / f"{domain}.{selector}.ed25519"
    path.write_bytes(base64.b64encode(bytes(signing)) + b"\n")
    public = base64.b64encode(bytes(signing.verify_key)).decode()
    return DkimKey(domain, selector, path, f"v=DKIM1; k=ed25519; p={public}")


def make_keys(directory: Path) -> CorpusKeys:
    """All the corpus keys, written under `directory`."""
    return CorpusKeys(
        opendkim=rsa_key(directory, "alpha.example.com", "od"),
        rsa=rsa_key(directory, "alpha.example.com", "rsa"),
        ed25519=ed25519_key(directory, "alpha.example.com", "ed"),
        weak=rsa_key(directory, "alpha.example.com", "weak", bits=512),
        third_party=rsa_key(directory, "beta.example.net", "tp"),
        strict=rsa_key(directory, "strict.example.org", "st"),
        strict_sub=rsa_key(directory, "sub.strict.example.org", "st"),
        arc_origin=rsa_key(directory, "arc.example.com", "arc1"),
        arc_forwarder=rsa_key(directory, "fwd.example.net", "fwd1"),
        arc_list=rsa_key(directory, "lists.example.org", "list1"),
    )
