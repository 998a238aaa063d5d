"""The differential corpus: messages signed by opendkim and by dkimpy, ARC chains sealed by
dkimpy, and envelopes that exercise SPF and DMARC. Built at test time from the keys of the
session (`tests.differential.keys`) and the zones of `tests.differential.zones`.

opendkim signs through Postfix (`OPENDKIM_TEMPLATES` go through one signing listener per
canonicalisation first; their signed copies come back to `build`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import dkim

from tests.differential.keys import CorpusKeys
from tests.peers.opendkim import DkimKey

GOOD = "192.0.2.10"  # inside every GOOD_NET SPF record
OUTSIDE = "198.51.100.7"  # outside them
FORWARDER_IP = "198.51.100.25"  # fwd.example.net's SPF allows it
HELO = "client.example.net"
SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]
BODY = "Hello Bob,\r\n\r\nthe minutes are attached below.\r\n\r\n-- \r\nAlice\r\n"


@dataclass(frozen=True, slots=True)
class Case:
    """One message of the corpus with the SMTP session that delivers it."""

    name: str
    client: str  # the client's IP address (XCLIENT towards Postfix)
    mail_from: str  # "" for the null sender
    data: bytes  # CRLF line ends
    helo: str = HELO

    @property
    def message_id(self) -> str:
        return f"<{self.name}@corpus.example.org>"


def message(name: str, author: str, *, subject: str = "Minutes", body: str = BODY) -> bytes:
    """A plain message from `author`, its Message-ID naming the case."""
    return (
        f"From: Alice <{author}>\r\nTo: Bob <bob@example.org>\r\nSubject: {subject}\r\n"
        f"Date: Fri, 04 Dec 2026 12:00:00 +0000\r\n"
        f"Message-ID: <{name}@corpus.example.org>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n\r\n{body}"
    ).encode()


def sign(
    data: bytes,
    key: DkimKey,
    canon: str = "relaxed/relaxed",
    *,
    selector: str = "",
    algorithm: bytes = b"",
    length: bool = False,
) -> bytes:
    """`data` with a DKIM-Signature by dkimpy on top."""
    header, body = canon.encode().split(b"/")
    algorithm = algorithm or (b"ed25519-sha256" if "ed25519" in key.record else b"rsa-sha256")
    signature = dkim.sign(
        data,
        (selector or key.selector).encode(),
        key.domain.encode(),
        key.private_key.read_bytes(),
        canonicalize=(header, body),
        signature_algorithm=algorithm,
        include_headers=SIGNED_HEADERS,
        length=length,
    )
    return bytes(signature) + data


def seal(data: bytes, key: DkimKey, arc: str, results: str = "spf=pass") -> bytes:
    """`data` with the next ARC set made by dkimpy for `key`'s domain, after its own
    Authentication-Results (``arc=`` its view of the chain so far)."""
    srv_id = f"mx.{key.domain}"
    ar = f"Authentication-Results: {srv_id}; {results}; arc={arc}\r\n".encode()
    made = dkim.arc_sign(
        ar + data,
        key.selector.encode(),
        key.domain.encode(),
        key.private_key.read_bytes(),
        srv_id.encode(),
        include_headers=SIGNED_HEADERS,
    )
    assert made, "dkimpy made no ARC set"
    return b"".join(made) + data


def trailing_spaces(data: bytes) -> bytes:
    """`data` with spaces added at the ends of the body's lines (relaxed body canon ignores
    them, simple does not)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    return head + sep + body.replace(b"\r\n", b"  \r\n")


def refold_subject(data: bytes) -> bytes:
    """The Subject header renamed in another case and folded (relaxed header canon ignores
    both, simple does not)."""
    return re.sub(rb"\r\nSubject: (\S+)", rb"\r\nSUBJECT:\r\n \1", data, count=1)


def tamper_tag(data: bytes, header: bytes, instance: int) -> bytes:
    """Flip one character of the ``b=`` value of the `header` with ``i=instance``."""
    lines = data.split(b"\r\n")
    for n, line in enumerate(lines):
        if line.lower().startswith(header.lower() + b":"):
            end = n + 1
            while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
                end += 1
            block = list(range(n, end))
            joined = b"\r\n".join(lines[m] for m in block)
            if not re.search(rb"\bi=%d;" % instance, joined):
                continue
            tag = re.search(rb";\s*b=\s*", joined)
            assert tag is not None, joined
            value_at = tag.end() + 4
            flipped = b"A" if joined[value_at : value_at + 1] != b"A" else b"B"
            joined = joined[:value_at] + flipped + joined[value_at + 1 :]
            lines[block[0] : block[-1] + 1] = joined.split(b"\r\n")
            return b"\r\n".join(lines)
    raise AssertionError(f"no {header!r} with i={instance}")


def drop_arc_set(data: bytes, instance: int) -> bytes:
    """`data` without the ARC set ``i=instance`` (its three headers)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    fields = re.split(rb"\r\n(?=[^ \t])", head)
    arc = (b"arc-seal:", b"arc-message-signature:", b"arc-authentication-results:")
    keep = [
        f
        for f in fields
        if not (f.lower().startswith(arc) and re.search(rb"\bi=%d;" % instance, f))
    ]
    return b"\r\n".join(keep) + sep + body


OPENDKIM_TEMPLATES: dict[str, tuple[str, bytes]] = {
    name: (canon, message(name, "alice@alpha.example.com"))
    for name, canon in {
        "dkim-opendkim-relaxed": "relaxed/relaxed",
        "dkim-opendkim-simple": "simple/simple",
        "dkim-opendkim-relaxed-simple": "relaxed/simple",
        "dkim-opendkim-relaxed-body-whitespace": "relaxed/relaxed",
        "dkim-opendkim-simple-body-whitespace": "simple/simple",
        "dkim-opendkim-relaxed-header-refolded": "relaxed/relaxed",
        "dkim-opendkim-simple-header-refolded": "simple/simple",
        "dkim-opendkim-body-changed": "relaxed/relaxed",
        "dkim-opendkim-subject-changed": "relaxed/simple",
        "dkim-opendkim-and-dkimpy-ed25519": "relaxed/relaxed",
    }.items()
}
"""Messages opendkim signs (through Postfix): name -> (canonicalisation, message)."""


def build(keys: CorpusKeys, opendkim_signed: Mapping[str, bytes]) -> list[Case]:
    """The whole corpus; `opendkim_signed` holds the OPENDKIM_TEMPLATES as opendkim signed
    them."""
    return _dkim(keys, opendkim_signed) + _spf() + _dmarc(keys) + _arc(keys)


def _dkim(keys: CorpusKeys, od: Mapping[str, bytes]) -> list[Case]:
    """Signatures by opendkim and dkimpy; the client is outside SPF, so DMARC (p=reject at
    alpha.example.com) rests on DKIM alone."""
    alpha = "alice@alpha.example.com"

    def case(name: str, data: bytes, author_mail_from: str = "bounce@alpha.example.com") -> Case:
        return Case(name, OUTSIDE, author_mail_from, data)

    def m(name: str, author: str = alpha) -> bytes:
        return message(name, author)

    changed: Callable[[bytes], bytes] = lambda d: d.replace(b"minutes", b"invoice")  # noqa: E731
    two_broken = sign(changed(sign(m("dkim-two-first-broken"), keys.rsa)), keys.ed25519)
    return [
        case("dkim-opendkim-relaxed", od["dkim-opendkim-relaxed"]),
        case("dkim-opendkim-simple", od["dkim-opendkim-simple"]),
        case("dkim-opendkim-relaxed-simple", od["dkim-opendkim-relaxed-simple"]),
        case(
            "dkim-opendkim-relaxed-body-whitespace",
            trailing_spaces(od["dkim-opendkim-relaxed-body-whitespace"]),
        ),
        case(
            "dkim-opendkim-simple-body-whitespace",
            trailing_spaces(od["dkim-opendkim-simple-body-whitespace"]),
        ),
        case(
            "dkim-opendkim-relaxed-header-refolded",
            refold_subject(od["dkim-opendkim-relaxed-header-refolded"]),
        ),
        case(
            "dkim-opendkim-simple-header-refolded",
            refold_subject(od["dkim-opendkim-simple-header-refolded"]),
        ),
        case("dkim-opendkim-body-changed", changed(od["dkim-opendkim-body-changed"])),
        case(
            "dkim-opendkim-subject-changed",
            od["dkim-opendkim-subject-changed"].replace(b"Subject: Minutes", b"Subject: Pay"),
        ),
        case(
            "dkim-opendkim-and-dkimpy-ed25519",
            sign(od["dkim-opendkim-and-dkimpy-ed25519"], keys.ed25519),
        ),
        case("dkim-dkimpy-rsa-relaxed", sign(m("dkim-dkimpy-rsa-relaxed"), keys.rsa)),
        case(
            "dkim-dkimpy-rsa-simple",
            sign(m("dkim-dkimpy-rsa-simple"), keys.rsa, "simple/simple"),
        ),
        case(
            "dkim-dkimpy-rsa-relaxed-simple",
            sign(m("dkim-dkimpy-rsa-relaxed-simple"), keys.rsa, "relaxed/simple"),
        ),
        case(
            "dkim-dkimpy-rsa-simple-relaxed",
            sign(m("dkim-dkimpy-rsa-simple-relaxed"), keys.rsa, "simple/relaxed"),
        ),
        case(
            "dkim-dkimpy-ed25519-relaxed",
            sign(m("dkim-dkimpy-ed25519-relaxed"), keys.ed25519),
        ),
        case(
            "dkim-dkimpy-ed25519-simple",
            sign(m("dkim-dkimpy-ed25519-simple"), keys.ed25519, "simple/simple"),
        ),
        case(
            "dkim-dkimpy-ed25519-body-changed",
            changed(sign(m("dkim-dkimpy-ed25519-body-changed"), keys.ed25519)),
        ),
        case(
            "dkim-dual-rsa-ed25519",
            sign(sign(m("dkim-dual-rsa-ed25519"), keys.rsa), keys.ed25519),
        ),
        case("dkim-two-first-broken", two_broken),
        case(
            "dkim-three-signatures",
            sign(
                sign(sign(m("dkim-three-signatures"), keys.rsa), keys.third_party),
                keys.ed25519,
            ),
        ),
        case(
            "dkim-third-party-only",
            sign(m("dkim-third-party-only"), keys.third_party),
        ),
        case(
            "dkim-length-whole-body",
            sign(m("dkim-length-whole-body"), keys.rsa, length=True),
        ),
        case(
            "dkim-length-appended",
            sign(m("dkim-length-appended"), keys.rsa, length=True) + b"Buy now!\r\n",
        ),
        case(
            "dkim-missing-key",
            sign(m("dkim-missing-key"), keys.rsa, selector="missing"),
        ),
        case(
            "dkim-revoked-key",
            sign(m("dkim-revoked-key"), keys.rsa, selector="revoked"),
        ),
        case("dkim-512-bit-key", sign(m("dkim-512-bit-key"), keys.weak)),
        case("dkim-key-timeout", sign(m("dkim-key-timeout"), keys.rsa, selector="slow")),
        case(
            "dkim-testing-key-pass",
            sign(m("dkim-testing-key-pass"), keys.rsa, selector="testing"),
        ),
        case(
            "dkim-testing-key-broken",
            changed(sign(m("dkim-testing-key-broken"), keys.rsa, selector="testing")),
        ),
        case(
            "dkim-rsa-sha1",
            sign(m("dkim-rsa-sha1"), keys.rsa_any_hash, algorithm=b"rsa-sha1"),
        ),
        case(
            "dkim-malformed-signature",
            b"DKIM-Signature: v=1; a=rsa-sha256; d=alpha.example.com; s=rsa; bh=x\r\n"
            + m("dkim-malformed-signature"),
        ),
        case("dkim-unsigned", m("dkim-unsigned")),
        case(
            "dkim-relaxed-alignment",
            sign(m("dkim-relaxed-alignment", "alice@news.alpha.example.com"), keys.rsa),
            "bounce@news.alpha.example.com",
        ),
        case(
            "dkim-strict-aligned",
            sign(m("dkim-strict-aligned", "alice@strict.example.org"), keys.strict),
            "bounce@strict.example.org",
        ),
        case(
            "dkim-strict-subdomain-signer",
            sign(m("dkim-strict-subdomain-signer", "alice@strict.example.org"), keys.strict_sub),
            "bounce@strict.example.org",
        ),
    ]


def _spf() -> list[Case]:
    """One message per SPF outcome; From: spf.example.net (p=none), MAIL FROM a subdomain
    (relaxed-aligned with it)."""

    def case(name: str, client: str, sub: str, helo: str = HELO) -> Case:
        mail_from = f"bounce@{sub}.spf.example.net" if sub else ""
        return Case(name, client, mail_from, message(name, "alice@spf.example.net"), helo)

    return [
        case("spf-pass", GOOD, "pass"),
        case("spf-fail", OUTSIDE, "fail"),
        case("spf-softfail", OUTSIDE, "softfail"),
        case("spf-neutral", OUTSIDE, "neutral"),
        case("spf-none", OUTSIDE, "none"),
        case("spf-no-such-domain", OUTSIDE, "nowhere"),
        case("spf-temperror-timeout", OUTSIDE, "slow"),
        case("spf-permerror-syntax", GOOD, "permerror"),
        case("spf-permerror-two-records", GOOD, "twice"),
        case("spf-permerror-include-missing", GOOD, "badinclude"),
        case("spf-include-pass", GOOD, "include"),
        case("spf-include-fail", OUTSIDE, "include"),
        case("spf-redirect-pass", GOOD, "redirect"),
        case("spf-mx-pass", GOOD, "mx"),
        case("spf-a-pass", GOOD, "a"),
        case("spf-a-fail", OUTSIDE, "a"),
        case("spf-null-sender-helo-pass", GOOD, "", helo="helo.spf.example.net"),
        case("spf-null-sender-helo-fail", OUTSIDE, "", helo="helo.spf.example.net"),
    ]


def _dmarc(keys: CorpusKeys) -> list[Case]:
    """Policies, alignment modes and subdomains; unsigned unless the name says otherwise."""

    def case(name: str, client: str, mail_from: str, author: str) -> Case:
        return Case(name, client, mail_from, message(name, author))

    return [
        case(
            "dmarc-p-none-fail", OUTSIDE, "a@none-policy.example.com", "a@none-policy.example.com"
        ),
        case("dmarc-p-none-pass", GOOD, "a@none-policy.example.com", "a@none-policy.example.com"),
        case(
            "dmarc-quarantine-fail", OUTSIDE, "a@quarantine.example.com", "a@quarantine.example.com"
        ),
        case("dmarc-quarantine-pass", GOOD, "a@quarantine.example.com", "a@quarantine.example.com"),
        case("dmarc-reject-fail", OUTSIDE, "a@reject.example.com", "a@reject.example.com"),
        case("dmarc-reject-pass", GOOD, "a@reject.example.com", "a@reject.example.com"),
        case("dmarc-spf-pass-unaligned", GOOD, "a@pass.spf.example.net", "a@reject.example.com"),
        case(
            "dmarc-relaxed-spf-subdomain",
            GOOD,
            "a@bounce.relaxed.example.org",
            "a@relaxed.example.org",
        ),
        case(
            "dmarc-relaxed-fail", OUTSIDE, "a@bounce.relaxed.example.org", "a@relaxed.example.org"
        ),
        case("dmarc-strict-spf-exact", GOOD, "a@strict.example.org", "a@strict.example.org"),
        case(
            "dmarc-strict-spf-subdomain",
            GOOD,
            "a@bounce.strict.example.org",
            "a@strict.example.org",
        ),
        case("dmarc-sp-quarantine-fail", OUTSIDE, "a@news.example.org", "a@news.example.org"),
        case("dmarc-sp-quarantine-pass", GOOD, "a@news.example.org", "a@news.example.org"),
        case(
            "dmarc-sp-reject-fail", OUTSIDE, "a@news.alpha.example.com", "a@news.alpha.example.com"
        ),
        case("dmarc-org-domain-p-none", OUTSIDE, "a@example.com", "a@example.com"),
        case("dmarc-no-record", GOOD, "a@nodmarc.example.net", "a@nodmarc.example.net"),
        Case(
            "dmarc-dkim-aligned-spf-unaligned",
            GOOD,
            "a@pass.spf.example.net",
            sign(message("dmarc-dkim-aligned-spf-unaligned", "a@alpha.example.com"), keys.rsa),
        ),
    ]


def _arc(keys: CorpusKeys) -> list[Case]:
    """ARC chains of 1-3 hops sealed by dkimpy: arc.example.com (which also DKIM-signs),
    fwd.example.net, lists.example.org. The last hop delivers from fwd.example.net's network."""
    hops = [keys.arc_origin, keys.arc_forwarder, keys.arc_list]

    def chain(name: str, count: int, between: Callable[[int, bytes], bytes] | None = None) -> bytes:
        data = sign(message(name, "alice@arc.example.com"), keys.arc_origin)
        for n, key in enumerate(hops[:count]):
            data = seal(data, key, "none" if n == 0 else "pass")
            if between is not None:
                data = between(n + 1, data)
        return data

    def body_after(hop: int) -> Callable[[int, bytes], bytes]:
        return lambda n, d: d.replace(b"minutes", b"invoice") if n == hop else d

    def case(name: str, data: bytes) -> Case:
        return Case(name, FORWARDER_IP, "bounce@fwd.example.net", data)

    return [
        case("arc-1-hop", chain("arc-1-hop", 1)),
        case("arc-2-hops", chain("arc-2-hops", 2)),
        case("arc-3-hops", chain("arc-3-hops", 3)),
        case("arc-1-hop-ams-broken", chain("arc-1-hop-ams-broken", 1, body_after(1))),
        case("arc-2-hops-ams-broken", chain("arc-2-hops-ams-broken", 2, body_after(2))),
        case(
            "arc-3-hops-older-ams-broken",
            chain("arc-3-hops-older-ams-broken", 3, body_after(1)),
        ),
        case(
            "arc-2-hops-seal-1-broken",
            tamper_tag(chain("arc-2-hops-seal-1-broken", 2), b"ARC-Seal", 1),
        ),
        case(
            "arc-3-hops-seal-3-broken",
            tamper_tag(chain("arc-3-hops-seal-3-broken", 3), b"ARC-Seal", 3),
        ),
        case(
            "arc-2-hops-aar-1-changed",
            re.sub(
                rb"(ARC-Authentication-Results: i=1;[^\r]*\r\n spf=)pass",
                rb"\1fail",
                chain("arc-2-hops-aar-1-changed", 2),
            ),
        ),
        case(
            "arc-2-hops-set-1-missing",
            drop_arc_set(chain("arc-2-hops-set-1-missing", 2), 1),
        ),
    ]
