"""The dmarc plugin against a real DNS server: discovery, alignment, p/sp/np, pct, overrides,
the evaluation record, settings; end to end through the SMTP listener to smtp-sink, with a test
plugin giving the SPF and DKIM results, and with the real spf plugin from conf.d files."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import smtplib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailgate import Address, Message, Session, Transaction, Verdict, VerdictKind, hookimpl
from mailgate.app import App
from mailgate.config import ConfigError, load_settings
from mailgate.dns import DnsSettings
from mailgate.loader import load_config
from mailgate.message import Header, new_spool
from mailgate.pipeline import EnabledPlugin
from mailgate.plugins.dmarc import EVALUATION_NOTE, Dmarc, DmarcSettings, Evaluation
from mailgate.quarantine import QuarantineStore
from tests.logs import captured_logs, events
from tests.milter.gate import app_behind_postfix
from tests.peers.dns import DnsServer
from tests.peers.smtp_sink import SmtpSink
from tests.peers.workdir import PeerDirs
from tests.plugins.test_spf import nameserver, silent_dns
from tests.smtp.conftest import relay_to
from tests.smtp.helpers import Gateway
from tests.test_cli import MAILGATE

__all__ = ["captured_logs", "silent_dns"]  # fixtures

ZONE = """\
$ORIGIN test.
$TTL 300
_dmarc.reject      IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@reject.test"
reject             IN A   192.0.2.10
_dmarc.quarantine  IN TXT "v=DMARC1; p=quarantine"
_dmarc.monitor     IN TXT "v=DMARC1; p=none"
_dmarc.strict      IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"
_dmarc.subs        IN TXT "v=DMARC1; p=reject; sp=none; np=quarantine"
exists.subs        IN A   192.0.2.10
mx-only.subs       IN MX  10 mail.reject.test.
_dmarc.own.subs    IN TXT "v=DMARC1; p=quarantine"
_dmarc.sampled     IN TXT "v=DMARC1; p=reject; pct=0"
_dmarc.half        IN TXT "v=DMARC1; p=reject; pct=50"
_dmarc.testing     IN TXT "v=DMARC1; p=quarantine; t=y"
_dmarc.two         IN TXT "v=DMARC1; p=reject"
_dmarc.two         IN TXT "v=DMARC1; p=none"
_dmarc.mixed       IN TXT "v=DMARC1; p=reject"
_dmarc.mixed       IN TXT "site-verification=abc"
_dmarc.broken      IN TXT "v=DMARC1; p=bounce"
_dmarc.split       IN TXT "v=DMARC1; " "p=reject"
nopolicy           IN A   192.0.2.10
"""

SPF_ZONE = """\
$ORIGIN spfd.test.
$TTL 300
@        IN TXT "v=spf1 ip4:127.0.0.1 -all"
_dmarc   IN TXT "v=DMARC1; p=reject"
other    IN TXT "v=spf1 ip4:127.0.0.1 -all"
"""


@pytest.fixture
def zone(dns_server: DnsServer) -> DnsServer:
    """The DNS server with the test. zone (one organizational domain per case)."""
    dns_server.add_zone(ZONE)
    dns_server.add_zone(SPF_ZONE)
    return dns_server


def plugin(server: str, timeout: float = 2.0, **settings: object) -> Dmarc:
    """The plugin as a conf.d file would configure it (no skipped networks unless given)."""
    table = {"skip_networks": [], **settings}
    loaded = load_settings(DmarcSettings, table, source="90-dmarc.toml")
    return Dmarc(loaded, dns=DnsSettings(nameservers=[server], timeout=timeout))


def message(*froms: str) -> Message:
    headers = [Header.new("From", f) for f in froms] + [Header.new("Subject", "dmarc")]
    return Message(headers, new_spool())


def spf_result(tx: Transaction, result: str, domain: str, identity: str = "mailfrom") -> None:
    """What the spf plugin records (the input format dmarc reads)."""
    tx.set_result("spf", result, identity=identity, domain=domain, auth_method="spf")


def dkim_result(tx: Transaction, *signatures: tuple[str, str]) -> None:
    """What the dkim plugin records: one auth result per (result, d=) pair."""
    results = [
        {
            "method": "dkim",
            "result": result,
            "reason": "",
            "properties": {"header.d": d, "header.s": "sel", "header.a": "rsa-sha256"},
        }
        for result, d in signatures
    ]
    tx.set_result("dkim", signatures[0][0] if signatures else "none", auth_results=results)


async def check(
    p: Dmarc,
    from_: str | tuple[str, ...],
    *,
    spf: tuple[str, ...] | None = None,
    dkim: tuple[tuple[str, str], ...] = (),
    ip: str = "192.0.2.55",
    sender: str = "bounce@envelope.test",
) -> tuple[Verdict | None, Transaction]:
    """Run `on_message` for a message From: `from_` with these SPF and DKIM results."""
    session = Session(ip, 40000, helo="client.example")
    tx = Transaction(Address(sender), [Address("bob@example.org")])
    if spf is not None:
        spf_result(tx, *spf)
    if dkim:
        dkim_result(tx, *dkim)
    tx.message = message(*((from_,) if isinstance(from_, str) else from_))
    verdict = await p.on_message(session, tx, tx.message)
    return verdict, tx


def evaluation(tx: Transaction) -> Evaluation:
    found = tx.notes[EVALUATION_NOTE]
    assert isinstance(found, Evaluation)
    return found


# -- results --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_", "spf", "dkim", "result", "disposition"),
    [
        ("a@reject.test", ("pass", "reject.test"), (), "pass", "none"),
        ("a@reject.test", ("pass", "bounces.reject.test"), (), "pass", "none"),  # relaxed
        ("a@reject.test", None, (("pass", "mail.reject.test"),), "pass", "none"),
        ("a@reject.test", ("fail", "reject.test"), (("fail", "reject.test"),), "fail", "reject"),
        ("a@reject.test", ("pass", "envelope.test"), (("pass", "signer.test"),), "fail", "reject"),
        ("a@quarantine.test", None, (), "fail", "quarantine"),
        ("a@monitor.test", None, (), "fail", "none"),
        ("a@strict.test", ("pass", "strict.test"), (), "pass", "none"),
        ("a@strict.test", ("pass", "b.strict.test"), (("pass", "c.strict.test"),), "fail",
         "reject"),
        ("a@x.strict.test", None, (("pass", "x.strict.test"),), "pass", "none"),
        ("a@nopolicy.test", None, (), "none", "none"),
        ("a@nowhere.test", None, (), "none", "none"),
        ("a@two.test", None, (), "none", "none"),
        ("a@mixed.test", None, (), "fail", "reject"),
        ("a@broken.test", None, (), "permerror", "none"),
        ("a@split.test", None, (), "fail", "reject"),
        # An aligned identifier that could not be checked decides nothing yet: no p=reject.
        ("a@reject.test", None, (("temperror", "reject.test"),), "temperror", "none"),
        ("a@reject.test", ("temperror", "reject.test"), (), "temperror", "none"),
        ("a@reject.test", ("temperror", "reject.test"), (("pass", "reject.test"),), "pass",
         "none"),
        # ... but one that would not align changes nothing.
        ("a@reject.test", ("fail", "reject.test"), (("temperror", "other.test"),), "fail",
         "reject"),
    ],
)  # fmt: skip
async def test_results(
    zone: DnsServer,
    from_: str,
    spf: tuple[str, str] | None,
    dkim: tuple[tuple[str, str], ...],
    result: str,
    disposition: str,
) -> None:
    verdict, tx = await check(plugin(nameserver(zone)), from_, spf=spf, dkim=dkim)
    found = tx.results["dmarc"]
    assert (found.result, found.details["disposition"]) == (result, disposition)
    domain = from_.partition("@")[2]
    assert found.details["auth_method"] == "dmarc"
    assert found.details["auth_properties"] == {"header.from": domain}
    kinds = {"none": None, "reject": VerdictKind.REJECT, "quarantine": VerdictKind.QUARANTINE}
    assert (verdict.kind if verdict else None) is kinds[disposition]


async def test_reject_is_550_5_7_1_naming_the_domain(zone: DnsServer) -> None:
    verdict, _ = await check(plugin(nameserver(zone)), "Alice <alice@Reject.test>")
    assert verdict is not None and (verdict.code, verdict.status) == (550, "5.7.1")
    assert verdict.text == "Message rejected: it fails the DMARC policy of reject.test"


async def test_one_log_line_per_evaluation(
    zone: DnsServer, captured_logs: list[dict[str, Any]]
) -> None:
    await check(plugin(nameserver(zone)), "a@sampled.test")
    [line] = events(captured_logs, "dmarc")
    assert line["level"] == "info"
    assert {k: line[k] for k in ("domain", "result", "policy", "disposition", "override")} == {
        "domain": "sampled.test",
        "result": "fail",
        "policy": "reject",
        "disposition": "quarantine",
        "override": "sampled_out",
    }


async def test_bad_tags_are_logged_and_defaults_used(
    zone: DnsServer, captured_logs: list[dict[str, Any]]
) -> None:
    zone.add_records("test.", '_dmarc.badtags IN TXT "v=DMARC1; p=reject; adkim=x; pct=200"')
    _, tx = await check(plugin(nameserver(zone)), "a@badtags.test")
    assert evaluation(tx).disposition == "reject"
    [line] = events(captured_logs, "dmarc record has bad tags")
    assert line["domain"] == "badtags.test" and len(line["ignored"]) == 2


async def test_quarantine_gives_the_reason(zone: DnsServer) -> None:
    verdict, _ = await check(plugin(nameserver(zone)), "a@quarantine.test")
    assert verdict == Verdict.quarantine(reason="DMARC policy of quarantine.test: quarantine")


async def test_the_from_domain_record_is_asked_first_then_the_organizational_one(
    zone: DnsServer,
) -> None:
    _, tx = await check(plugin(nameserver(zone)), "a@deep.sub.reject.test")
    asked = [(q.name, q.rdtype) for q in zone.queries]
    assert asked == [("_dmarc.deep.sub.reject.test.", "TXT"), ("_dmarc.reject.test.", "TXT")]
    e = evaluation(tx)
    assert e.policy_published is not None and e.policy_published.domain == "reject.test"
    assert (e.policy, e.policy_source) == ("reject", "p")  # no sp: p


@pytest.mark.parametrize(
    ("from_", "policy", "source"),
    [
        ("a@subs.test", "reject", "p"),  # the organizational domain itself
        ("a@exists.subs.test", "none", "sp"),  # a subdomain that exists (A)
        ("a@mx-only.subs.test", "none", "sp"),  # exists by its MX
        ("a@missing.subs.test", "quarantine", "np"),  # NXDOMAIN: np (DMARCbis)
        ("a@own.subs.test", "quarantine", "p"),  # its own record
    ],
)
async def test_sp_and_np(zone: DnsServer, from_: str, policy: str, source: str) -> None:
    _, tx = await check(plugin(nameserver(zone)), from_)
    e = evaluation(tx)
    assert (e.result, e.policy, e.policy_source, e.disposition) == ("fail", policy, source, policy)


async def test_np_needs_no_existence_check_for_a_pass(zone: DnsServer) -> None:
    _, tx = await check(plugin(nameserver(zone)), "a@missing.subs.test", spf=("pass", "subs.test"))
    assert tx.results["dmarc"].result == "pass"
    assert not any(q.rdtype in ("A", "AAAA", "MX") for q in zone.queries)


async def test_pct_0_samples_reject_down_to_quarantine(zone: DnsServer) -> None:
    verdict, tx = await check(plugin(nameserver(zone)), "a@sampled.test")
    assert verdict is not None and verdict.kind is VerdictKind.QUARANTINE
    e = evaluation(tx)
    assert (e.policy, e.disposition) == ("reject", "quarantine")
    assert [(r.type, r.comment) for r in e.reasons] == [("sampled_out", "pct=0")]
    assert tx.results["dmarc"].details["override"] == "sampled_out"


async def test_testing_mode_samples_quarantine_down_to_none(zone: DnsServer) -> None:
    verdict, tx = await check(plugin(nameserver(zone)), "a@testing.test")
    assert verdict is None and evaluation(tx).disposition == "none"
    assert [r.type for r in evaluation(tx).reasons] == ["sampled_out"]


async def test_pct_sampling_is_reproducible_with_a_seed(zone: DnsServer) -> None:
    async def run() -> list[str]:
        p = plugin(nameserver(zone), sampling_seed=7)
        return [evaluation((await check(p, "a@half.test"))[1]).disposition for _ in range(20)]

    first = await run()
    assert first == await run()
    assert set(first) == {"reject", "quarantine"}  # pct=50: some of each


@pytest.mark.parametrize(
    ("froms", "reason"),
    [
        ((), "no From: header"),
        (("a@reject.test", "b@reject.test"), "2 From: headers"),
        (("a@reject.test, b@quarantine.test",), "From: has addresses in 2 domains"),
        (("undisclosed-recipients:;",), "no address with a domain in From:"),
        (("a@foo..reject.test",), "no address with a domain in From:"),
        (("a@[192.0.2.1]",), "no address with a domain in From:"),
        ((f"a@{'x' * 64}.reject.test",), "no address with a domain in From:"),
    ],
)
async def test_no_single_author_domain_is_permerror(
    zone: DnsServer, froms: tuple[str, ...], reason: str
) -> None:
    verdict, tx = await check(plugin(nameserver(zone)), froms)
    found = tx.results["dmarc"]
    assert verdict is None and (found.result, found.reason) == ("permerror", reason)
    assert found.details["auth_properties"] == {}
    assert zone.queries == []


async def test_two_addresses_in_one_domain_are_evaluated(zone: DnsServer) -> None:
    verdict, tx = await check(plugin(nameserver(zone)), ("a@reject.test, b@reject.test",))
    assert tx.results["dmarc"].result == "fail" and verdict is not None


async def test_temperror_is_accepted_by_default(silent_dns: str) -> None:
    verdict, tx = await check(plugin(silent_dns, timeout=0.5), "a@reject.test")
    found = tx.results["dmarc"]
    assert verdict is None and found.result == "temperror"
    assert found.reason.startswith("looking up _dmarc.reject.test TXT: ")


async def test_temperror_tempfails_when_asked(silent_dns: str) -> None:
    verdict, _ = await check(plugin(silent_dns, timeout=0.5, temperror="tempfail"), "a@reject.test")
    assert verdict is not None and (verdict.code, verdict.status) == (451, "4.7.1")
    assert verdict.text == "The DMARC policy of reject.test could not be checked, try again later"


async def test_authenticated_and_skipped_clients_are_not_checked(zone: DnsServer) -> None:
    p = Dmarc(DmarcSettings(), dns=DnsSettings(nameservers=[nameserver(zone)]))
    verdict, tx = await check(p, "a@reject.test", ip="127.0.0.1")
    assert verdict is None and tx.results["dmarc"].reason == "skip_networks"
    session = Session("192.0.2.55", auth_login="alice")
    tx = Transaction(Address("a@reject.test"))
    tx.message = message("a@reject.test")
    assert await p.on_message(session, tx, tx.message) is None
    assert tx.results["dmarc"].result == "skipped" and zone.queries == []


# -- overrides ------------------------------------------------------------------------------------


async def test_never_enforce_domains_and_their_subdomains(zone: DnsServer) -> None:
    p = plugin(nameserver(zone), never_enforce=["reject.test"])
    for from_ in ("a@reject.test", "a@sub.reject.test"):
        verdict, tx = await check(p, from_)
        e = evaluation(tx)
        assert verdict is None and (e.result, e.policy, e.disposition) == ("fail", "reject", "none")
        assert [(r.type, r.comment) for r in e.reasons] == [
            ("local_policy", "never_enforce reject.test")
        ]
    verdict, _ = await check(p, "a@quarantine.test")
    assert verdict is not None


async def test_trusted_forwarders(zone: DnsServer) -> None:
    p = plugin(nameserver(zone), trusted_forwarders=["192.0.2.0/28"])
    verdict, tx = await check(p, "a@reject.test", ip="192.0.2.5")
    assert verdict is None
    assert tx.results["dmarc"].details["override"] == "trusted_forwarder"
    verdict, _ = await check(p, "a@reject.test", ip="192.0.2.55")
    assert verdict is not None


async def test_override_rule_sees_arc_and_the_from_domain(zone: DnsServer) -> None:
    rules = [
        {"if": '"arc" in results && results.arc == "pass"', "then": "local_policy"},
        {"if": 'header_from.domain == "quarantine.test"', "then": "mailing_list"},
        {"else": ""},
    ]
    p = plugin(nameserver(zone), override=rules)
    session = Session("192.0.2.55")
    tx = Transaction(Address("x@list.test"))
    tx.set_result("arc", "pass")
    tx.message = message("a@reject.test")
    assert await p.on_message(session, tx, tx.message) is None
    assert tx.results["dmarc"].details["override"] == "local_policy"
    verdict, tx = await check(p, "a@quarantine.test")
    assert verdict is None and tx.results["dmarc"].details["override"] == "mailing_list"
    verdict, _ = await check(p, "a@reject.test")
    assert verdict is not None


async def test_a_pass_or_p_none_records_no_override(zone: DnsServer) -> None:
    p = plugin(nameserver(zone), trusted_forwarders=["0.0.0.0/0"])
    _, tx = await check(p, "a@monitor.test")
    assert evaluation(tx).reasons == []
    _, tx = await check(p, "a@reject.test", spf=("pass", "reject.test"))
    assert evaluation(tx).reasons == []


# -- the evaluation record ------------------------------------------------------------------------


async def test_the_evaluation_has_what_an_aggregate_report_needs(zone: DnsServer) -> None:
    _, tx = await check(
        plugin(nameserver(zone)),
        "a@sampled.test",
        spf=("pass", "envelope.test"),
        dkim=(("pass", "signer.test"), ("fail", "sampled.test")),
        sender="bounce@envelope.test",
    )
    record = evaluation(tx).as_dict()
    assert record == {
        "source_ip": "192.0.2.55",
        "header_from": "sampled.test",
        "envelope_from": "envelope.test",
        "spf": {"domain": "envelope.test", "scope": "mfrom", "result": "pass"},
        "dkim": [
            {"domain": "signer.test", "selector": "sel", "result": "pass"},
            {"domain": "sampled.test", "selector": "sel", "result": "fail"},
        ],
        "result": "fail",
        "reason": "no aligned SPF or DKIM pass for sampled.test",
        "policy_published": {
            "domain": "sampled.test",
            "adkim": "r",
            "aspf": "r",
            "p": "reject",
            "sp": "reject",
            "pct": 0,
            "np": None,
            "testing": False,
            "fo": "0",
            "rua": (),
            "ruf": (),
            "ri": 86400,
        },
        "policy": "reject",
        "policy_source": "p",
        "dkim_aligned": "fail",
        "spf_aligned": "fail",
        "disposition": "quarantine",
        "reasons": [{"type": "sampled_out", "comment": "pct=0"}],
        "organizational_domain": "sampled.test",
    }
    assert tx.results["dmarc"].details["evaluation"] == record
    assert record == dataclasses.asdict(evaluation(tx))  # as_dict is a faster asdict
    published = evaluation(tx).policy_published
    assert published is not None
    rua = dataclasses.replace(published, rua=("mailto:a@b.test",))
    with_rua = dataclasses.replace(evaluation(tx), policy_published=rua, spf=None)
    assert with_rua.as_dict() == dataclasses.asdict(with_rua)


async def test_null_sender_uses_the_helo_identity_of_spf(zone: DnsServer) -> None:
    _, tx = await check(
        plugin(nameserver(zone)), "a@reject.test", spf=("pass", "mx.reject.test", "helo"), sender=""
    )
    e = evaluation(tx)
    assert e.spf is not None and e.spf.scope == "helo"
    assert (e.result, e.spf_aligned, e.envelope_from) == ("pass", "pass", "")


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('temperror = "reject"\n', "temperror"),
        ('never_enforce = ["a@example.com"]\n', "never_enforce"),
        ('trusted_forwarders = ["nonsense"]\n', "trusted_forwarders"),
        ('override = "sampled_out"\n', "override"),
        ('override = [{ if = "results.arc == \\"pass\\"", then = "other" }, { else = "" }]\n',
         "override[0].if"),
        ("sampling_seed = 1.5\n", "sampling_seed"),
    ],
)  # fmt: skip
def test_bad_settings_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "90-dmarc.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / '90-dmarc.toml'}: {key}:")


def test_shipped_conf_d_file_is_disabled_and_valid(tmp_path: Path) -> None:
    shipped = Path(__file__).parent.parent.parent / "conf.d" / "90-dmarc.toml"
    text = shipped.read_text()
    (tmp_path / "90-dmarc.toml").write_text(text)
    assert load_config(tmp_path).disabled == [("dmarc", str(tmp_path / "90-dmarc.toml"))]
    (tmp_path / "90-dmarc.toml").write_text(text.replace("enabled = false", "enabled = true"))
    assert [p.name for p in load_config(tmp_path).pipeline().plugins][-1] == "dmarc"


# -- end to end: SMTP client -> mailgate -> smtp-sink ---------------------------------------------


REJECTED = b"5.7.1 Message rejected: it fails the DMARC policy of reject.test"


class AuthInputs:
    """A stand-in for the spf and dkim plugins: records the results named in ``X-Test-SPF:
    <result> <domain>`` and ``X-Test-DKIM: <result> <d=>`` headers, in their format."""

    reads = frozenset({"headers"})

    @hookimpl
    def on_message(self, transaction: Transaction, message: Message) -> None:
        spf = message.get("X-Test-SPF")
        if spf:
            result, domain = spf.split()
            spf_result(transaction, result, domain)
        signatures = [tuple(v.split()) for v in message.get_all("X-Test-DKIM")]
        if signatures:
            dkim_result(transaction, *signatures)  # type: ignore[arg-type]


def send(port: int, from_: str, *headers: str) -> tuple[int, bytes]:
    """One message with this From: and extra headers; the end-of-data reply."""
    lines = [f"From: {from_}", "Subject: dmarc", *headers, "", "hello", ""]
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.mail("bounce@envelope.test")[0] == 250
        assert client.rcpt("bob@example.org")[0] == 250
        return data(client, "\r\n".join(lines).encode())


def data(client: smtplib.SMTP, message: bytes) -> tuple[int, bytes]:
    """DATA; the reply (smtplib raises for a 5xx to DATA itself)."""
    try:
        return client.data(message)
    except smtplib.SMTPDataError as exc:
        error = exc.smtp_error
        return exc.smtp_code, error if isinstance(error, bytes) else error.encode()


@pytest.fixture
def gateway(zone: DnsServer, smtp_sink: SmtpSink, tmp_path: Path) -> Any:
    """The SMTP listener with [AuthInputs, dmarc], relaying to smtp-sink."""
    dmarc = plugin(nameserver(zone))
    plugins = [EnabledPlugin("inputs", AuthInputs()), EnabledPlugin("dmarc", dmarc)]
    egress = relay_to(smtp_sink.host, smtp_sink.port, tmp_path / "quarantine")
    gw = Gateway(egress, plugins).start()
    yield gw
    gw.stop()


async def test_smtp_pass_is_delivered(gateway: Gateway, smtp_sink: SmtpSink) -> None:
    code, _ = await asyncio.to_thread(
        send, gateway.port, "a@reject.test", "X-Test-DKIM: pass mail.reject.test"
    )
    assert code == 250
    assert len(smtp_sink.wait_for_messages(1)) == 1


async def test_smtp_fail_under_p_reject_is_refused(gateway: Gateway, smtp_sink: SmtpSink) -> None:
    code, text = await asyncio.to_thread(
        send, gateway.port, "a@reject.test", "X-Test-SPF: pass envelope.test"
    )
    assert (code, text) == (550, REJECTED)
    await asyncio.sleep(0.3)
    assert smtp_sink.messages() == []


async def test_smtp_fail_under_p_quarantine_is_held(
    gateway: Gateway, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    code, _ = await asyncio.to_thread(send, gateway.port, "a@quarantine.test")
    assert code == 250
    [held] = QuarantineStore(tmp_path / "quarantine").entries()
    assert held["reason"] == "DMARC policy of quarantine.test: quarantine"
    await asyncio.sleep(0.3)
    assert smtp_sink.messages() == []


@pytest.mark.parametrize(
    "from_",
    ["a@monitor.test", "a@sampled.test", "a@nopolicy.test", "a@two.test", "a@exists.subs.test"],
)
async def test_smtp_fail_without_enforcement_is_delivered(
    gateway: Gateway, smtp_sink: SmtpSink, tmp_path: Path, from_: str
) -> None:
    code, _ = await asyncio.to_thread(send, gateway.port, from_)
    assert code == 250
    if from_ == "a@sampled.test":  # reject sampled out: quarantine
        assert len(QuarantineStore(tmp_path / "quarantine").entries()) == 1
    else:
        assert len(smtp_sink.wait_for_messages(1)) == 1


@pytest.mark.parametrize(
    ("from_", "header", "outcome"),
    [
        ("a@reject.test", "X-Test-SPF: pass bounces.reject.test", "delivered"),  # relaxed
        ("a@strict.test", "X-Test-SPF: pass b.strict.test", "rejected"),  # aspf=s
        ("a@strict.test", "X-Test-DKIM: pass strict.test", "delivered"),
        ("a@missing.subs.test", "X-Test-SPF: fail subs.test", "quarantined"),  # np
        ("a@exists.subs.test", "X-Test-SPF: fail subs.test", "delivered"),  # sp=none
    ],
)
async def test_smtp_alignment_modes_and_np(
    gateway: Gateway, smtp_sink: SmtpSink, tmp_path: Path, from_: str, header: str, outcome: str
) -> None:
    code, _ = await asyncio.to_thread(send, gateway.port, from_, header)
    assert code == (550 if outcome == "rejected" else 250)
    held = QuarantineStore(tmp_path / "quarantine").entries()
    assert len(held) == (outcome == "quarantined")
    if outcome == "delivered":
        assert len(smtp_sink.wait_for_messages(1)) == 1


async def test_smtp_multiple_from_is_delivered_as_permerror(
    gateway: Gateway, smtp_sink: SmtpSink
) -> None:
    code, _ = await asyncio.to_thread(send, gateway.port, "a@reject.test", "From: b@reject.test")
    assert code == 250
    assert len(smtp_sink.wait_for_messages(1)) == 1


# -- end to end with the real spf plugin, both enabled by conf.d files ----------------------------


@pytest.fixture
async def app(tmp_path: Path, zone: DnsServer, smtp_sink: SmtpSink) -> AsyncIterator[App]:
    """mailgate with 80-spf.toml and 90-dmarc.toml, its DNS the test server."""
    (tmp_path / "mailgate.toml").write_text(
        f'[dns]\nnameservers = ["{nameserver(zone)}"]\ntimeout = 2.0\n'
    )
    (tmp_path / "80-spf.toml").write_text("skip_networks = []\nreject = []\n")
    (tmp_path / "90-dmarc.toml").write_text("skip_networks = []\n")
    relay = f"{smtp_sink.host}:{smtp_sink.port}"
    app = App(tmp_path, listen="127.0.0.1:0", relay=relay, configure_logs=False)
    await app.start()
    yield app
    await app.stop()


def send_as(port: int, sender: str, from_: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        assert client.mail(sender)[0] == 250
        assert client.rcpt("bob@example.org")[0] == 250
        return data(client, f"From: {from_}\r\nSubject: spf+dmarc\r\n\r\nhi\r\n".encode())


async def test_real_spf_aligned_pass_is_delivered(app: App, smtp_sink: SmtpSink) -> None:
    code, _ = await asyncio.to_thread(send_as, app.ports[0], "b@other.spfd.test", "a@spfd.test")
    assert code == 250  # SPF pass for other.spfd.test, relaxed-aligned with spfd.test
    assert len(smtp_sink.wait_for_messages(1)) == 1


async def test_real_spf_unaligned_is_rejected_by_dmarc(app: App, smtp_sink: SmtpSink) -> None:
    code, text = await asyncio.to_thread(send_as, app.ports[0], "b@spfd.test", "a@reject.test")
    assert (code, text) == (550, REJECTED)


# -- the example of docs/plugins/dmarc.md, run with mailgate try ----------------------------------

DOC = Path(__file__).parent.parent.parent / "docs" / "plugins" / "dmarc.md"
DOC_ZONES = (
    """\
$ORIGIN example.com.
$TTL 300
@        IN MX  10 mail.example.com.
mail     IN A   192.0.2.10
@        IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc   IN TXT "v=DMARC1; p=reject; sp=quarantine; rua=mailto:dmarc-reports@example.com"
""",
    '$ORIGIN example.net.\n$TTL 300\nlists IN TXT "v=spf1 ip4:203.0.113.0/24 -all"\n',
)


def doc_conf(directory: Path, server: DnsServer) -> None:
    """The first conf.d block of each file in the doc, with [dns] pointed at `server`."""
    blocks = re.findall(r"```toml\n# conf\.d/(\S+)\n(.*?)```", DOC.read_text(), re.S)
    for name, text in reversed(blocks):
        (directory / name).write_text(text)
    toml = directory / "mailgate.toml"
    toml.write_text(toml.read_text().replace('"127.0.0.1"', f'"{nameserver(server)}"'))


@pytest.mark.parametrize(
    ("client", "sender", "from_", "status", "shown"),
    [
        ("198.51.100.7", "alice@example.com", "Alice <alice@example.com>", 5,
         "-> 550 5.7.1 Message rejected: it fails the DMARC policy of example.com"),
        ("192.0.2.25", "bounces@example.com", "Alice <alice@example.com>", 0,
         "Result: accepted: would relay to 127.0.0.1:25"),
        ("203.0.113.9", "list@lists.example.net", "Alice <alice@example.com>", 0,
         "Result: accepted: would relay to 127.0.0.1:25"),
        ("198.51.100.7", "alice@example.com", "alice@news.example.com", 0,
         "quarantine: 250 2.0.0 OK (DMARC policy of news.example.com: quarantine)"),
    ],
)  # fmt: skip
def test_the_documented_example(
    tmp_path: Path, dns_server: DnsServer, client: str, sender: str, from_: str, status: int,
    shown: str,
) -> None:  # fmt: skip
    for zone_text in DOC_ZONES:
        dns_server.add_zone(zone_text)
    conf = tmp_path / "conf.d"
    conf.mkdir()
    doc_conf(conf, dns_server)
    eml = tmp_path / "msg.eml"
    eml.write_text(f"From: {from_}\nTo: bob@example.org\nSubject: hello\n\nhi\n")
    argv = ["try", "--config", str(conf), "--client", client, "--from", sender, str(eml)]
    done = subprocess.run([*MAILGATE, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == status, done.stdout + done.stderr
    assert shown in done.stdout
    assert shown in DOC.read_text()


# -- through the milter listener: Postfix with XCLIENT presents an outside client ----------------


def test_postfix_refuses_a_dmarc_fail_with_our_reply(zone: DnsServer, peer_dirs: PeerDirs) -> None:
    zone.add_records("spfd.test.", 'mx IN TXT "v=spf1 ip4:192.0.2.1 -all"')
    conf = peer_dirs.new("conf")
    (conf / "mailgate.toml").write_text(
        f'[dns]\nnameservers = ["{nameserver(zone)}"]\n'
        '[[listener]]\ntype = "milter"\naddress = "inet:127.0.0.1:0"\n'
    )
    (conf / "80-spf.toml").write_text("reject = []\n")  # default skip_networks, as shipped
    (conf / "90-dmarc.toml").write_text("")
    with app_behind_postfix(Path(conf), peer_dirs.new("postfix")) as (_, postfix, port):

        def swaks(addr: str) -> str:
            argv = ["swaks", "--server", f"127.0.0.1:{port}", "--from", "bounce@mx.spfd.test"]
            argv += ["--h-From", "a@spfd.test", "--to", "bob@local.test"]
            argv += ["--xclient-addr", addr, "--timeout", "20"]
            return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout

        out = swaks("192.0.2.55")  # SPF fails for mx.spfd.test: nothing aligned
        assert "550 5.7.1 Message rejected: it fails the DMARC policy of spfd.test" in out, out
        out = swaks("192.0.2.1")  # SPF passes for mx.spfd.test: relaxed-aligned with spfd.test
        assert " queued as " in out or "Ok: queued" in out, out
        [delivered] = postfix.wait_for_delivered(1)
        assert b"From: a@spfd.test" in delivered.data
