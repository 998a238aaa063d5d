"""The example of docs/plugins/arc.md, run with ``mailgate try`` on its own conf.d blocks (with
[dns] pointed at the test DNS server and fresh keys): what the page shows is what happens."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers.dns import DnsServer
from tests.plugins.arc.conftest import hop, keygen, zone
from tests.plugins.arc.test_dmarc_override import OVERRIDE_RULE

DOC = Path(__file__).parent.parent.parent.parent / "docs" / "plugins" / "arc.md"
MAILGATE = [sys.executable, "-m", "mailgate.cli"]
MESSAGE = (
    b"From: Alice <alice@example.com>\r\nTo: bob@fwd.example.net\r\nSubject: lunch\r\n"
    b"Date: Fri, 04 Dec 2026 12:00:00 +0000\r\nMessage-ID: <l1@example.com>\r\n\r\nNoon?\r\n"
)


def doc_blocks() -> dict[str, str]:
    """The page's ``# conf.d/NAME`` TOML blocks, by file name."""
    found = re.findall(r"```toml\n# conf\.d/(\S+)\n(.*?)```", DOC.read_text(), re.S)
    return dict(found)


@pytest.fixture
def example(tmp_path: Path, dns_server: DnsServer) -> tuple[Path, Path]:
    """The conf.d of the page and the forwarded message (sealed by example.com, then by
    fwd.example.net), with their keys in the test DNS server."""
    keys = tmp_path / "keys"
    keys.mkdir()
    origin = keygen(keys, "example.com", "arc1")
    forwarder = keygen(keys, "fwd.example.net", "fwd1")
    ours = keygen(keys, "example.org", "arc2026")
    dns_server.add_zone(
        zone(
            origin, '@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"', '_dmarc IN TXT "v=DMARC1; p=reject"'
        )
    )
    dns_server.add_zone(zone(forwarder, '@ IN TXT "v=spf1 ip4:198.51.100.0/24 -all"'))
    dns_server.add_zone(zone(ours))
    conf = tmp_path / "conf.d"
    conf.mkdir()
    for name, text in doc_blocks().items():
        text = text.replace('"127.0.0.1"', f'"{dns_server.host}:{dns_server.port}"')
        text = text.replace("/etc/mailgate/dkim/example.org.arc2026.key", str(ours.private_key))
        (conf / name).write_text(text)
    eml = tmp_path / "fwd.eml"
    eml.write_bytes(hop(hop(MESSAGE, origin, "none"), forwarder, "pass"))
    return conf, eml


def try_(conf: Path, eml: Path, rcpt: str) -> subprocess.CompletedProcess[str]:
    argv = ["try", "--config", str(conf), "--client", "198.51.100.25"]
    argv += ["--from", "bounce@fwd.example.net", "--rcpt", rcpt, str(eml)]
    return subprocess.run([*MAILGATE, *argv], capture_output=True, text=True, timeout=60)


def test_the_page_and_the_shipped_file_have_the_tested_override_rule() -> None:
    assert doc_blocks()["90-dmarc.toml"] == "enabled = true\n" + OVERRIDE_RULE
    shipped = (DOC.parent.parent.parent / "conf.d" / "87-arc.toml").read_text()
    uncommented = "".join(line.removeprefix("#   ") + "\n" for line in shipped.splitlines())
    assert OVERRIDE_RULE in uncommented


def test_a_trusted_forwarder_is_delivered(example: tuple[Path, Path]) -> None:
    done = try_(*example, "bob@example.org")
    assert done.returncode == 0, done.stdout + done.stderr
    for shown in (
        "  ok       arc.on_message",
        "  ok       dmarc.on_message",
        "  -> 250 2.0.0 OK",
        "Result: accepted: would relay to 127.0.0.1:25 (not contacted) for <bob@example.org> "
        "(250 2.0.0 OK)",
    ):
        assert shown in done.stdout
        assert shown in DOC.read_text()
    assert "insert header at 0: ARC-Seal" not in done.stdout  # not for the list: not sealed


def test_without_trust_it_is_refused(example: tuple[Path, Path]) -> None:
    conf, eml = example
    (conf / "87-arc.toml").write_text("enabled = true\n")
    done = try_(conf, eml, "bob@example.org")
    assert done.returncode == 5
    shown = "550 5.7.1 Message rejected: it fails the DMARC policy of example.com"
    assert shown in done.stdout and shown in DOC.read_text()


def test_list_mail_is_sealed(example: tuple[Path, Path]) -> None:
    done = try_(*example, "team@lists.example.org")
    assert done.returncode == 0, done.stdout + done.stderr
    for shown in (
        "+ insert header at 0: ARC-Authentication-Results: i=3; mx.example.org;",
        ' spf=pass reason="sender SPF authorized" smtp.mailfrom=fwd.example.net;',
        " arc=pass header.oldest-pass=1 smtp.remote-ip=198.51.100.25;",
        ' dmarc=fail reason="no aligned SPF or DKIM pass for example.com" header.from=example.com',
        "+ insert header at 0: ARC-Seal: i=3; cv=pass; a=rsa-sha256; d=example.org; s=arc2026;",
    ):
        assert shown in done.stdout
        assert shown in DOC.read_text()
