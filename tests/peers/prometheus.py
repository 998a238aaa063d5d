"""A private Prometheus server that scrapes given targets every second, and answers PromQL."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.peers.ports import free_port
from tests.peers.process import Peer, make_dir, start_daemon
from tests.peers.workdir import PeerDirs

PROMETHEUS = "/usr/bin/prometheus"


class Prometheus(Peer):
    """Prometheus on 127.0.0.1 with its own TSDB in `workdir`, scraping `targets` (host:port,
    path ``/metrics``) every second. `query` runs an instant PromQL query through its HTTP API."""

    def __init__(self, workdir: Path, targets: Sequence[str]) -> None:
        self.workdir = workdir
        self.targets = list(targets)
        self.port = free_port()

    def config(self) -> str:
        """prometheus.yml: one job, one-second scrapes."""
        targets = ", ".join(json.dumps(t) for t in self.targets)
        return (
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: mailgate\n"
            f"    static_configs:\n      - targets: [{targets}]\n"
        )

    def start(self) -> Prometheus:
        """Write the configuration and start the server; ready when ``/-/ready`` answers 200."""
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config())
        data = make_dir(self.workdir / "data")
        argv = [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.daemon = start_daemon("prometheus", argv, workdir=self.workdir, probe=self._ready)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self._url("/-/ready"), timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the decoded ``data`` (raises on an error answer)."""
        url = self._url(f"/api/v1/{path}?{urllib.parse.urlencode(params)}")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raises ValueError if Prometheus refuses it)."""
        data = self.api("query", query=promql)
        result: list[dict[str, Any]] = data["result"]
        return result

    def scraped(self) -> int:
        """How many targets the last scrapes found up."""
        return sum(int(float(r["value"][1])) for r in self.query("up"))


PrometheusFactory = Callable[[Sequence[str]], Prometheus]


@pytest.fixture
def prometheus_factory(peer_dirs: PeerDirs) -> Iterator[PrometheusFactory]:
    """``prometheus_factory(["127.0.0.1:9425"])``: a started Prometheus scraping those targets;
    stopped after the test."""
    started: list[Prometheus] = []

    def factory(targets: Sequence[str]) -> Prometheus:
        server = Prometheus(peer_dirs.new("prometheus"), targets).start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
