"""Fixtures of the reports tests: a store on SQLite and PostgreSQL, and a node whose SMTP
listener runs spf, dmarc and reports against the test DNS and queues to a sink."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mailgate.app import App
from mailgate.plugins.reports import ReportingService, Reports
from tests.apps import started_apps
from tests.peers.dns import DnsServer
from tests.queue.conftest import store_url
from tests.queue.helpers import toml_value, write_config

__all__ = ["store_url"]  # fixtures

ZONE = """\
$ORIGIN test.
$TTL 300
alpha                  IN TXT "v=spf1 ip4:127.0.0.1 -all"
_dmarc.alpha           IN TXT "v=DMARC1; p=none; rua=mailto:dmarc@alpha.test"
beta                   IN TXT "v=spf1 ip4:127.0.0.1 -all"
_dmarc.beta            IN TXT "v=DMARC1; p=reject; rua=mailto:reports@collector.test"
beta.test._report._dmarc.collector IN TXT "v=DMARC1"
gamma                  IN TXT "v=spf1 ip4:127.0.0.1 -all"
_dmarc.gamma           IN TXT "v=DMARC1; p=none; rua=mailto:reports@unauthorized.test"
delta                  IN TXT "v=spf1 ip4:127.0.0.1 -all"
_dmarc.delta           IN TXT "v=DMARC1; p=none; rua=mailto:dmarc@delta.test!1k"
norua                  IN TXT "v=spf1 ip4:127.0.0.1 -all"
_dmarc.norua           IN TXT "v=DMARC1; p=none"
epsilon                IN TXT "v=spf1 ip4:127.0.0.1 -all"
_dmarc.epsilon         IN TXT ( "v=DMARC1; p=none; fo=1; "
                                "ruf=mailto:ruf@epsilon.test,mailto:ruf@unauthorized.test" )
elsewhere              IN TXT "v=spf1 -all"
"""
"""alpha reports to itself; beta (p=reject) to an authorized other domain; gamma to one that
did not authorize it; delta takes at most 1 KiB; norua asks for no reports; epsilon asks for
failure reports (fo=1) at its own domain and at one that did not authorize it; elsewhere fails
SPF."""

REPORTS_TOML = {
    "org_name": "Mailgate Test",
    "contact": "postmaster@mx.example.net",
    "sender": "dmarc-reports@mx.example.net",
    "submitter": "mx.example.net",
    "flush_interval": 0.2,
    "check_interval": 3600.0,
}

NodeFactory = Callable[..., Awaitable[App]]


@pytest.fixture
def reports_zone(dns_server: DnsServer) -> DnsServer:
    """The test DNS with the zone above."""
    dns_server.add_zone(ZONE)
    return dns_server


@pytest.fixture
async def reporting_node(tmp_path: Path, reports_zone: DnsServer) -> AsyncIterator[NodeFactory]:
    """``await reporting_node(store_url, next_hop, dkim=TOML, **reports_settings)``: a started
    `App` (with the dkim plugin configured by `dkim`, when given)."""
    async with started_apps() as apps:

        async def factory(
            store_url: str, next_hop: str, *, dkim: str = "", **reports: object
        ) -> App:
            directory = write_config(tmp_path / f"conf{len(apps)}", store_url, next_hop)
            dns = f"{reports_zone.host}:{reports_zone.port}"
            with (directory / "mailgate.toml").open("a") as core:
                core.write(f'[dns]\nnameservers = ["{dns}"]\n')
            (directory / "80-spf.toml").write_text("skip_networks = []\nreject = []\n")
            (directory / "90-dmarc.toml").write_text("skip_networks = []\n")
            if dkim:
                (directory / "85-dkim.toml").write_text(dkim)
            table = {**REPORTS_TOML, **reports}
            lines = [f"{k} = {toml_value(v)}" for k, v in table.items()]
            (directory / "95-reports.toml").write_text("\n".join(lines) + "\n")
            return await apps.start(directory)

        yield factory


def service_of(app: App) -> ReportingService:
    """The running reporting service of `app`."""
    [plugin] = [p.instance for p in app.pipeline.plugins if isinstance(p.instance, Reports)]
    assert plugin.service is not None
    return plugin.service
