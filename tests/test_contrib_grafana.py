"""contrib/grafana/mailgate.json, and the queries in docs/metrics.md, against a real Prometheus
scraping a real mailgate: every query is valid PromQL, and the panels that traffic should fill
have data."""

from __future__ import annotations

import json
import os
import re
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.ports import free_port
from tests.peers.prometheus import Prometheus, PrometheusFactory
from tests.peers.smtp_sink import SmtpSink
from tests.test_cli import MAILGATE, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "contrib" / "grafana" / "mailgate.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"

FILLED_BY_TRAFFIC = {
    "Messages per second, by outcome",
    "Share of messages rejected",
    "Verdicts per plugin",
    "Plugin latency p95, by hook",
    "End-of-data latency p95, by plugin",
    "Sessions open",
    "Sessions per second",
    "Message size p50 and p95",
    "Version",
}
"""Panels with data after one accepted and one refused message (no failures, no reloads)."""


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target, with Grafana's variables filled in."""
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], grafana_to_promql(target["expr"]))
        for panel in board["panels"]
        for target in panel["targets"]
    ]


def grafana_to_promql(expr: str) -> str:
    """Grafana's ``$__rate_interval`` and ``$instance`` as Prometheus would get them."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


def doc_queries() -> list[str]:
    """Each query in docs/metrics.md's ``promql`` blocks (blank lines separate them)."""
    blocks = re.findall(r"```promql\n(.*?)```", METRICS_DOC.read_text(), re.S)
    return [q.strip() for block in blocks for q in block.split("\n\n") if q.strip()]


@pytest.fixture
def mailgate(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[tuple[int, int]]:
    """`mailgate serve` with metrics on: relays for example.org only, adds a header.
    Yields (SMTP port, metrics port)."""
    conf = tmp_path / "conf"
    conf.mkdir()
    port, metrics = free_port(), free_port()
    (conf / "mailgate.toml").write_text(
        f'[[listener]]\naddress = "127.0.0.1:{port}"\n'
        f'[relay]\naddress = "{smtp_sink.host}:{smtp_sink.port}"\n'
        f'[metrics]\naddress = "127.0.0.1:{metrics}"\n'
        '[relay_control]\ndomains = ["example.org"]\nnetworks = ["192.0.2.0/24"]\n'
    )
    (conf / "10-add_header.toml").write_text('name = "X-Graphed"\n')
    log = (tmp_path / "mailgate.log").open("wb")
    proc = subprocess.Popen(
        [*MAILGATE, "serve", "--config", str(conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for_port(port, proc)
        yield port, metrics
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


LOOPING = b"Received: from x by y; Thu, 26 Nov 2026 00:00:00 +0000\r\n" * 101 + b"\r\nhi\r\n"
"""More Received: headers than the listener's max_received (100): refused at end of data."""


def traffic(port: int) -> None:
    """One message delivered, one whose only recipient is refused (relay denied: rejected),
    one refused at the end of data (a mail loop), one the client gives up with RSET (aborted)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("a@example.net", ["b@example.org"], b"Subject: graphed\r\n\r\nhi\r\n")
        client.mail("a@example.net")
        client.rcpt("b@example.org")
        client.rset()
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@example.net", ["c@elsewhere.test"], b"Subject: no\r\n\r\nhi\r\n")
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail("a@example.net", ["b@example.org"], LOOPING)


def wait_for(prometheus: Prometheus, promql: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Poll `promql` until it has a non-zero sample."""
    deadline = time.monotonic() + timeout
    while True:
        result = prometheus.query(promql)
        if any(float(r["value"][1]) > 0 for r in result):
            return result
        assert time.monotonic() < deadline, f"no data for {promql}"
        time.sleep(0.5)


def test_dashboard_and_documented_queries_on_real_prometheus(
    mailgate: tuple[int, int], prometheus_factory: PrometheusFactory
) -> None:
    port, metrics = mailgate
    prometheus = prometheus_factory([f"127.0.0.1:{metrics}"])
    wait_for(prometheus, "up")
    # A series appears at its first increment, and a rate needs it to move after that: send,
    # wait until Prometheus has the series, send again.
    traffic(port)
    wait_for(prometheus, 'mailgate_messages_total{outcome="accepted"}')
    traffic(port)
    wait_for(prometheus, 'rate(mailgate_messages_total{outcome="accepted"}[1m])')
    wait_for(prometheus, 'rate(mailgate_plugin_verdicts_total{plugin="relay_control"}[1m])')

    results: dict[str, list[dict[str, Any]]] = {}
    for title, promql in dashboard_queries():
        results.setdefault(title, []).extend(prometheus.query(promql))  # ValueError if invalid
    assert set(results) >= FILLED_BY_TRAFFIC
    empty = sorted(title for title in FILLED_BY_TRAFFIC if not results[title])
    assert empty == [], f"panels without data: {empty}"
    outcomes = {r["metric"]["outcome"] for r in results["Messages per second, by outcome"]}
    assert {"accepted", "aborted", "rejected"} <= outcomes
    verdicts = results["Verdicts per plugin"]
    assert {(r["metric"]["plugin"], r["metric"]["verdict"]) for r in verdicts} == {
        ("relay_control", "reject")
    }

    queries = doc_queries()
    assert len(queries) >= 8
    for promql in queries:
        prometheus.query(promql)  # each documented query is valid PromQL
