"""Haraka as a system under test: its npm package, installed once into a cache directory.

Haraka is what many sites pick for a scriptable SMTP front end, so the comparison table puts
it beside mailgate: the pinned npm release relaying everything to the bench's smtp-sink with
its `smtp_forward` plugin, and otherwise its defaults (cluster mode with `nodes` unset, i.e.
one master and one worker; the DNS plugins of the generated plugin list are not enabled).

The install is the slow part (about 25-50 s from the registry), so it happens once into
``~/.cache/mailgate-bench/haraka`` (or ``$MAILGATE_BENCH_CACHE/haraka``) and every later run
reuses it. A missing node or npm is a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.peers.dns import DnsServer

from .harness import SmtpSink, System, process_tree, stop_process

HARAKA_VERSION = "3.3.4"
"""The Haraka release the bench installs; its ``package.json`` proves a cached install."""

INSTALL_ATTEMPTS = 3
INSTALL_TIMEOUT = 900.0
"""Seconds one ``npm install`` may take: a slow registry makes the install slow, not failed."""

LOOPBACK_PTR_ZONE = """\
$ORIGIN 127.in-addr.arpa.
$TTL 300
@          IN SOA ns1.127.in-addr.arpa. hostmaster.127.in-addr.arpa. 1 3600 600 86400 300
@          IN NS  ns1.127.in-addr.arpa.
1.0.0      IN PTR localhost.
"""
"""The reverse zone Haraka's connection-time rDNS lookup of 127.0.0.1 is answered from."""


def cache_dir() -> Path:
    """Where the bench keeps what it installs (shared by every worktree of this user)."""
    base = os.environ.get("MAILGATE_BENCH_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "mailgate-bench"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: the Haraka benchmark needs node and npm")
    return found


def installed_version(prefix: Path) -> str | None:
    """The Haraka version installed under `prefix`, or None when there is none."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        manifest = json.loads((prefix / "node_modules/Haraka/package.json").read_text())
        version: str = manifest["version"]
        if (prefix / "node_modules/.bin/haraka").exists():
            return version
    return None


@contextlib.contextmanager
def _install_lock(path: Path) -> Iterator[None]:
    # Two bench runs (or two CI jobs on one runner) must not install into one directory at once.
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def install_haraka(prefix: Path | None = None) -> Path:
    """Install the pinned Haraka under `prefix` unless it is there already; return `prefix`.

    The install goes into a fresh directory that replaces `prefix` only once npm has
    succeeded, so an interrupted install is never mistaken for a good one. A slow or flaky
    registry gets retries with a long timeout; a missing node or npm raises at once.
    """
    prefix = prefix or cache_dir() / "haraka"
    _tool("node")
    npm = _tool("npm")
    if installed_version(prefix) == HARAKA_VERSION:
        return prefix
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with _install_lock(prefix.parent / ".haraka-install.lock"):
        if installed_version(prefix) == HARAKA_VERSION:
            return prefix
        fresh = prefix.with_name(f"{prefix.name}.installing")
        failures: list[str] = []
        for attempt in range(INSTALL_ATTEMPTS):
            shutil.rmtree(fresh, ignore_errors=True)
            fresh.mkdir()
            # A package.json of its own stops npm from walking up into a parent project.
            (fresh / "package.json").write_text('{"private": true}\n')
            try:
                done = subprocess.run(
                    [npm, "install", "--no-audit", "--no-fund", "--prefer-offline",
                     "--fetch-retries=5", f"Haraka@{HARAKA_VERSION}"],
                    cwd=fresh, capture_output=True, timeout=INSTALL_TIMEOUT, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                failures.append(f"attempt {attempt + 1}: timed out after {INSTALL_TIMEOUT} s")
                continue
            if done.returncode == 0 and installed_version(fresh) == HARAKA_VERSION:
                shutil.rmtree(prefix, ignore_errors=True)
                fresh.rename(prefix)
                return prefix
            tail = done.stderr.decode(errors="replace")[-500:]
            failures.append(f"attempt {attempt + 1}: npm exit {done.returncode}: {tail}")
            time.sleep(5 * (attempt + 1))
        raise RuntimeError(f"npm install Haraka@{HARAKA_VERSION} failed:\n" + "\n".join(failures))


def write_instance(home: Path, port: int, sink_port: int, dns_port: int) -> None:
    """The Haraka instance's config: listen on `port`, relay everything to the sink.

    Only what the benchmark needs is set; everything else is Haraka's default (logging at
    ``info`` to stdout, which the harness keeps in a file, as it does mailgate's). `relay`
    with ``all=true`` accepts every recipient (loopback only), which makes Haraka run the
    ``queue_outbound`` hook, so `smtp_forward` needs ``enable_outbound=true``.
    """
    config = home / "config"
    config.mkdir(parents=True, exist_ok=True)
    files = {
        "smtp.ini": f"listen=127.0.0.1:{port}\npublic_ip=127.0.0.1\n",
        "plugins": "relay\nqueue/smtp_forward\n",
        "relay.ini": "[relay]\nacl=false\nforce_routing=false\nall=true\n",
        "smtp_forward.ini": (
            f"host=127.0.0.1\nport={sink_port}\nenable_tls=false\nenable_outbound=true\n"
        ),
        "me": "haraka.bench.test\n",
    }
    for name, text in files.items():
        (config / name).write_text(text)
    # Haraka's core looks up every client's rDNS through node's default resolver. c-ares
    # answers 127.0.0.1 from /etc/hosts when it is listed there; any lookup that does reach
    # DNS goes to the bench's loopback server, so nothing leaves loopback.
    (home / "loopback-dns.js").write_text(
        f"require('node:dns').setServers(['127.0.0.1:{dns_port}'])\n"
    )


class HarakaSystem(System):
    """Haraka relaying to the sink with `smtp_forward`; its CPU and memory are those of the
    node processes (the cluster master and its worker)."""

    def start(
        self, workdir: Path, downstream: SmtpSink | None = None, *, dump: bool = False
    ) -> None:
        """Install Haraka if needed, start a loopback DNS server for its rDNS, then Haraka."""
        self.prefix = install_haraka()
        self.dns = DnsServer().start()
        self.dns.add_zone(LOOPBACK_PTR_ZONE)
        super().start(workdir, downstream, dump=dump)

    def haraka_command(self, port: int, sink: SmtpSink, workdir: Path) -> list[str]:
        """Create the instance directory (``haraka -i``) and return Haraka's command line."""
        home = workdir / self.name
        haraka = self.prefix / "node_modules/.bin/haraka"
        subprocess.run([str(haraka), "-i", str(home)], check=True, capture_output=True, timeout=120)
        write_instance(home, port, sink.port, self.dns.port)
        preload = str(home / "loopback-dns.js")
        return [_tool("node"), "--require", preload, str(haraka), "-c", str(home)]

    def stop(self) -> None:
        """Stop the worker(s) and the master by their PIDs, then the sink and DNS server."""
        if self.proc is not None and self.proc.poll() is None:
            for pid in reversed(process_tree(self.proc.pid)[1:]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            stop_process(self.proc)
        super().stop()
        dns = getattr(self, "dns", None)
        if dns is not None:
            dns.stop()


def haraka_system(name: str = "haraka") -> HarakaSystem:
    """The Haraka system of the bench's SYSTEMS table."""
    system = HarakaSystem(name, lambda port, sink, workdir: [])
    system.command = system.haraka_command
    return system
