"""Prometheus metrics: `mailgate serve` as a real process, scraped over HTTP; and the milter
listener behind a real Postfix."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailgate import __version__
from mailgate.app import App
from tests.milter.gate import app_behind_postfix, swaks
from tests.peers.ports import free_port
from tests.peers.smtp_sink import SmtpSink
from tests.peers.workdir import PeerDirs
from tests.test_cli import MAILGATE, run, wait_for_port

# A third-party plugin, "installed" by a dist-info directory on the server's PYTHONPATH.
REFUSER_MODULE = '''\
from mailgate import Verdict, hookimpl


class Refuser:
    """Refuses every message it is called for, at DATA."""

    @hookimpl
    def on_data(self):
        return Verdict.reject(550, "5.7.1", "Refused by the test plugin")
'''
REFUSER_DIST = {
    "METADATA": "Metadata-Version: 2.1\nName: refuser-plugin\nVersion: 0.1\n",
    "entry_points.txt": "[mailgate.plugins]\nrefuser = refuser_plugin:Refuser\n",
}
SMTP = {"ingress": "smtp", "listener": "smtp"}
"""The labels of the default SMTP listener."""
MESSAGE = b"From: a@example.net\r\nSubject: metrics\r\n\r\nhello\r\n"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``, by (sample name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample `name` with exactly `labels`, or None when it is not there."""
    return samples.get((name, frozenset(labels.items())))


def scrape_until(port: int, name: str, expected: float, **labels: str) -> Samples:
    """Scrape until sample `name` has `expected` (sessions end after the client has gone)."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(port)
        if value(samples, name, **labels) == expected or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


@dataclass
class Served:
    """A running ``mailgate serve``: its process, SMTP port and metrics port."""

    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int


@pytest.fixture
def served(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[Served]:
    """`mailgate serve` with metrics, add_header, and the refuser for mail to refuse@."""
    site = tmp_path / "site"
    (site / "refuser_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "refuser_plugin.py").write_text(REFUSER_MODULE)
    for name, text in REFUSER_DIST.items():
        (site / "refuser_plugin-0.1.dist-info" / name).write_text(text)
    conf = tmp_path / "conf"
    conf.mkdir()
    metrics_port = free_port()
    (conf / "mailgate.toml").write_text(f'[metrics]\naddress = "127.0.0.1:{metrics_port}"\n')
    (conf / "10-add_header.toml").write_text('name = "X-Metered"\nvalue = "yes"\n')
    (conf / "20-refuser.toml").write_text("when = 'rcpts.exists(r, r.local == \"refuse\")'\n")
    port = free_port()
    log = (tmp_path / "mailgate.log").open("wb")
    argv = ["serve", "--config", str(conf), "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        [*MAILGATE, *argv, "--relay", f"{smtp_sink.host}:{smtp_sink.port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(site)},
    )
    try:
        wait_for_port(port, proc)
        wait_for_port(metrics_port, proc)
        yield Served(proc, port, metrics_port)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        log.close()


def send(port: int, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("a@example.net", [rcpt], MESSAGE)


def test_serve_counts_messages_plugin_calls_and_sessions(
    served: Served, smtp_sink: SmtpSink
) -> None:
    # The fixture's readiness probe was a session too.
    before = scrape_until(served.metrics_port, "mailgate_sessions_active", 0, **SMTP)
    probes = value(before, "mailgate_sessions_total", **SMTP) or 0
    send(served.port, "ok@example.org")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(served.port, "refuse@example.org")
    assert refused.value.smtp_code == 550
    with smtplib.SMTP("127.0.0.1", served.port, timeout=10) as client:
        client.ehlo()
        client.mail("a@example.net")
        client.rcpt("ok@example.org")  # and QUIT: the transaction is aborted
    (delivered,) = smtp_sink.wait_for_messages(1)
    assert delivered.header("X-Metered") == "yes"

    m = scrape_until(served.metrics_port, "mailgate_sessions_active", 0, **SMTP)
    assert value(m, "mailgate_sessions_active", **SMTP) == 0
    assert value(m, "mailgate_sessions_total", **SMTP) == probes + 3
    assert value(m, "mailgate_messages_total", **SMTP, outcome="accepted") == 1
    assert value(m, "mailgate_messages_total", **SMTP, outcome="rejected") == 1
    assert value(m, "mailgate_messages_total", **SMTP, outcome="aborted") == 1

    calls = "mailgate_plugin_calls_total"
    assert value(m, calls, plugin="add_header", hook="on_message", status="ok") == 1
    assert value(m, calls, plugin="refuser", hook="on_data", status="ok") == 1
    assert value(m, calls, plugin="refuser", hook="on_data", status="skipped") == 1
    assert value(m, calls, plugin="relay_control", hook="on_rcpt", status="ok") == 3
    assert value(m, calls, plugin="sender_auth", hook="on_mail", status="ok") == 3
    verdicts = "mailgate_plugin_verdicts_total"
    assert value(m, verdicts, plugin="refuser", hook="on_data", verdict="reject") == 1
    assert [k for k in m if k[0] == verdicts and ("plugin", "refuser") not in k[1]] == []

    # Skipped calls are not timed: one on_data call of the refuser ran.
    seconds = "mailgate_plugin_call_seconds"
    assert value(m, f"{seconds}_count", plugin="refuser", hook="on_data") == 1
    assert value(m, f"{seconds}_count", plugin="add_header", hook="on_message") == 1
    assert value(m, f"{seconds}_bucket", plugin="add_header", hook="on_message", le="+Inf") == 1
    assert 0 < (value(m, f"{seconds}_sum", plugin="add_header", hook="on_message") or 0) < 1

    # Only the accepted message had data; its size is what went downstream.
    assert value(m, "mailgate_message_size_bytes_count") == 1
    assert value(m, "mailgate_message_size_bytes_sum") == len(delivered.data)
    assert value(m, "mailgate_message_size_bytes_bucket", le="1024.0") == 1

    assert value(m, "mailgate_build_info", version=__version__) == 1
    assert value(m, "mailgate_config_reloads_total", result="ok") is None


def test_sighup_reload_is_counted(served: Served) -> None:
    served.proc.send_signal(signal.SIGHUP)
    m = scrape_until(served.metrics_port, "mailgate_config_reloads_total", 1, result="ok")
    assert value(m, "mailgate_config_reloads_total", result="ok") == 1


def test_other_paths_are_404_and_other_methods_405(served: Served) -> None:
    base = f"http://127.0.0.1:{served.metrics_port}"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{base}/", timeout=10)
    assert missing.value.code == 404
    post = urllib.request.Request(f"{base}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=10)
    assert refused.value.code == 405
    assert refused.value.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:99999", 9425])
def test_bad_metrics_address_stops_start_up(tmp_path: Path, address: object) -> None:
    toml = f'"{address}"' if isinstance(address, str) else str(address)
    (tmp_path / "mailgate.toml").write_text(f"[metrics]\naddress = {toml}\n")
    where = f"{tmp_path}/mailgate.toml: metrics.address: found"
    for command in ("check-config", "serve"):
        result = run(command, "--config", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}")
        assert result.returncode == 1
        assert where in result.stderr
        assert 'expected "host:port", or "" for none' in result.stderr


def test_no_metrics_address_serves_no_metrics(tmp_path: Path) -> None:
    app = App(tmp_path, configure_logs=False)
    assert app.metrics is None and app.metrics_server is None and app.observers == []


def test_milter_ingress_through_postfix_is_counted(peer_dirs: PeerDirs) -> None:
    conf = peer_dirs.new("conf")
    metrics_port = free_port()
    (conf / "mailgate.toml").write_text(
        f'[metrics]\naddress = "127.0.0.1:{metrics_port}"\n'
        '[[listener]]\ntype = "milter"\naddress = "inet:127.0.0.1:0"\nname = "pf-milter"\n'
    )
    (conf / "10-add_header.toml").write_text('name = "X-Metered"\n')
    with app_behind_postfix(Path(conf), peer_dirs.new("postfix")) as (_, postfix, port):
        out = swaks(port)
        assert out.returncode == 0, out.stdout
        (delivered,) = postfix.wait_for_delivered(1)
        assert delivered.message["X-Metered"] == "passed"
        milter = {"ingress": "milter", "listener": "pf-milter"}
        m = scrape_until(metrics_port, "mailgate_sessions_active", 0, **milter)
        assert value(m, "mailgate_sessions_total", **milter) == 1
        assert value(m, "mailgate_sessions_active", **milter) == 0
        assert value(m, "mailgate_messages_total", **milter, outcome="accepted") == 1
        assert [k for k in m if k[0] == "mailgate_messages_total"] == [
            ("mailgate_messages_total", frozenset({**milter, "outcome": "accepted"}.items()))
        ]
        calls = "mailgate_plugin_calls_total"
        assert value(m, calls, plugin="add_header", hook="on_message", status="ok") == 1
        # add_header reads nothing, so Postfix was not asked for the body: no size is known.
        assert value(m, "mailgate_message_size_bytes_count") == 0
