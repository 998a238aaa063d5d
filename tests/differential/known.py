"""The explained differences between mailgate and the daemons on the differential corpus,
each with the RFC section that decides it (docs/authentication-differential.md explains
each under the same name)."""

from __future__ import annotations

from dataclasses import dataclass

Where = tuple[str, str, str]
"""(check, daemon, case)."""


@dataclass(frozen=True, slots=True)
class Difference:
    """One named disagreement and where it shows: (check, daemon, case) -> (theirs, ours)."""

    name: str
    rfc: str
    why: str
    differs: dict[Where, tuple[str, str]]


A = "alpha.example.com"

KNOWN: list[Difference] = [
    Difference(
        "unsigned content after l=",
        "RFC 6376 8.2",
        "content appended after the l= count is not covered by the signature; mailgate's "
        'default unsigned_body = "policy" does not let it pass (and so DMARC fails)',
        {
            ("dkim", "opendkim", "dkim-length-appended"): (f"{A}=pass", f"{A}=policy"),
            ("dkim", "rspamd", "dkim-length-appended"): (f"{A}=pass", f"{A}=policy"),
            ("dmarc", "opendmarc", "dkim-length-appended"): ("pass", "fail p=reject"),
            ("dmarc", "rspamd", "dkim-length-appended"): ("pass", "fail p=reject"),
        },
    ),
    Difference(
        "rsa-sha1",
        "RFC 8301 3.1",
        "rsa-sha1 MUST NOT be used for verifying; the daemons still accept it",
        {
            ("dkim", "opendkim", "dkim-rsa-sha1"): (f"{A}=pass", f"{A}=policy"),
            ("dkim", "rspamd", "dkim-rsa-sha1"): (f"{A}=pass", f"{A}=policy"),
            ("dmarc", "opendmarc", "dkim-rsa-sha1"): ("pass", "fail p=reject"),
            ("dmarc", "rspamd", "dkim-rsa-sha1"): ("pass", "fail p=reject"),
        },
    ),
    Difference(
        "RSA key under 1024 bits",
        "RFC 8301 3.2",
        "such signatures MUST NOT be considered valid: mailgate says fail, opendkim policy, "
        "rspamd passes them",
        {
            ("dkim", "opendkim", "dkim-512-bit-key"): (f"{A}=policy", f"{A}=fail"),
            ("dkim", "rspamd", "dkim-512-bit-key"): (f"{A}=pass", f"{A}=fail"),
            ("dmarc", "rspamd", "dkim-512-bit-key"): ("pass", "fail p=reject"),
        },
    ),
    Difference(
        "no key record",
        "RFC 6376 6.1.2 step 3; RFC 8601 2.7.1",
        "a missing key is PERMFAIL (no key for signature): permerror, not a signature that "
        "failed to verify, and not an unsigned message",
        {
            ("dkim", "opendkim", "dkim-missing-key"): (f"{A}=fail", f"{A}=permerror"),
            ("dkim", "rspamd", "dkim-missing-key"): ("none", f"{A}=permerror"),
        },
    ),
    Difference(
        "revoked key",
        "RFC 6376 3.6.1 (p=) and 6.1.2 step 6; RFC 8601 2.7.1",
        "an empty p= is PERMFAIL (key revoked): permerror",
        {
            ("dkim", "opendkim", "dkim-revoked-key"): (f"{A}=fail", f"{A}=permerror"),
            ("dkim", "rspamd", "dkim-revoked-key"): ("none", f"{A}=permerror"),
        },
    ),
    Difference(
        "malformed signature",
        "RFC 6376 6.1.1; RFC 8601 2.7.1",
        "a DKIM-Signature without b= (a required tag) is PERMFAIL: permerror; the daemons "
        "report nothing for it",
        {
            ("dkim", "opendkim", "dkim-malformed-signature"): ("none", f"{A}=permerror"),
            ("dkim", "rspamd", "dkim-malformed-signature"): ("none", f"{A}=permerror"),
        },
    ),
    Difference(
        "key lookup timed out",
        "RFC 6376 6.1.2 step 2; RFC 8601 2.7.1",
        "a key query that times out is TEMPFAIL (key unavailable): temperror; opendkim 2.11 "
        "writes no dkim= result at all (rspamd agrees with mailgate)",
        {("dkim", "opendkim", "dkim-key-timeout"): ("none", f"{A}=temperror")},
    ),
    Difference(
        "failed signature of a testing key",
        "RFC 6376 3.6.1 (t=y)",
        "verifiers MUST NOT treat mail from a domain in testing mode differently from "
        "unsigned mail: mailgate reports neutral, the daemons fail",
        {
            ("dkim", "opendkim", "dkim-testing-key-broken"): (f"{A}=fail", f"{A}=neutral"),
            ("dkim", "rspamd", "dkim-testing-key-broken"): (f"{A}=fail", f"{A}=neutral"),
        },
    ),
    Difference(
        "SPF lookup timed out",
        "RFC 7208 2.6.6 and 4.4",
        "a DNS timeout is temperror; opendmarc 1.4.2 reports fail",
        {("spf", "opendmarc", "spf-temperror-timeout"): ("fail", "temperror")},
    ),
    Difference(
        "SPF record errors",
        "RFC 7208 4.5, 4.6 and 5.2",
        "two SPF records, an unknown mechanism anywhere in the record, and an include: of a "
        "domain without a record are permerror; rspamd evaluates such records anyway",
        {
            ("spf", "rspamd", "spf-permerror-syntax"): ("pass", "permerror"),
            ("spf", "rspamd", "spf-permerror-two-records"): ("pass", "permerror"),
            ("spf", "rspamd", "spf-permerror-include-missing"): ("fail", "permerror"),
            ("dmarc", "rspamd", "spf-permerror-syntax"): ("pass", "fail p=none"),
            ("dmarc", "rspamd", "spf-permerror-two-records"): ("pass", "fail p=none"),
        },
    ),
    Difference(
        "DMARC after a temporary error",
        "RFC 7489 3.1 and 6.6.2; DMARCbis; RFC 8601 2.7.2",
        "with no aligned pass but an aligned identifier that could not be checked (a DKIM key "
        "or SPF lookup that timed out), the result is temperror, as rspamd says, not fail: a "
        "later try may pass; opendmarc reports fail (and would apply p=reject)",
        {
            ("dmarc", "opendmarc", "dkim-key-timeout"): ("fail p=reject", "temperror"),
            ("dmarc", "opendmarc", "spf-temperror-timeout"): ("fail p=none", "temperror"),
        },
    ),
    Difference(
        "ARC chain with a missing instance",
        "RFC 8617 5.2 and 4.1.1",
        "a chain whose instances do not run 1..N fails (cv=fail); the ARC result values are "
        "none, pass and fail; rspamd writes permerror",
        {("arc", "rspamd", "arc-2-hops-set-1-missing"): ("permerror", "fail")},
    ),
]
