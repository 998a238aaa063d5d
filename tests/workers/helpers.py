"""`mailgate serve` with workers, as a real process tree, for the tests of tests/workers."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.peers.ports import free_port

MAILGATE = str(Path(sys.executable).parent / "mailgate")
Event = dict[str, Any]


class Server:
    """A running ``mailgate serve --config conf`` whose log (JSON lines) is `log`."""

    def __init__(self, conf: Path, log: Path, port: int) -> None:
        self.conf = conf
        self.log = log
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def events(self) -> list[Event]:
        """Every JSON log line written so far."""
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def wait_for(self, test: Callable[[Event], bool], after: int = 0, timeout: float = 30) -> Event:
        """The first log event from index `after` on that passes `test` (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events()[after:] if test(e)]
            if found:
                return found[0]
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"mailgate exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise AssertionError(f"no such log event within {timeout}s:\n{self.log.read_text()}")

    def master_event(self, name: str, after: int = 0, timeout: float = 30) -> Event:
        """The master's next log event `name`."""
        return self.wait_for(
            lambda e: e["event"] == name and e.get("worker") == "master", after, timeout
        )

    def signal(self, sig: int) -> None:
        """Send `sig` to the master."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def worker_pids(self) -> dict[int, int]:
        """Worker number -> pid, from the master's ``started`` and ``worker started again``."""
        pids: dict[int, int] = {}
        for e in self.events():
            if e.get("worker") != "master":
                continue
            if e["event"] == "started":
                pids.update(enumerate(e["worker_pids"], start=1))
            elif e["event"] == "worker started again":
                pids[e["number"]] = e["pid"]
        return pids

    def send(self, count: int, *, headers: str = "") -> list[int]:
        """Send `count` messages, one connection each; the final reply code of each."""
        codes = []
        for i in range(count):
            with smtplib.SMTP("127.0.0.1", self.port, timeout=15) as client:
                body = f"{headers}Subject: m{i}\r\n\r\nbody {i}\r\n"
                try:
                    client.sendmail("a@x.test", ["b@y.test"], body)
                    codes.append(250)
                except smtplib.SMTPResponseException as exc:
                    codes.append(exc.smtp_code)
        return codes

    def served_by(self, after: int = 0, count: int = 0) -> list[int]:
        """The worker of each ``session end`` logged from event `after` on (waits for `count`
        of them: a session's last line may follow the client's last reply)."""
        deadline = time.monotonic() + 15
        while True:
            ends = [e["worker"] for e in self.events()[after:] if e["event"] == "session end"]
            if len(ends) >= count or time.monotonic() > deadline:
                return ends
            time.sleep(0.05)


def write_config(conf: Path, port: int, relay: tuple[str, int], extra: str = "") -> None:
    """A ``mailgate.toml`` with two workers, one SMTP listener on `port`, relaying to `relay`."""
    conf.mkdir(exist_ok=True)
    (conf / "mailgate.toml").write_text(
        '[mailgate]\nworkers = 2\nhostname = "mx.test"\ndrain_timeout = 20\n'
        f'[[listener]]\naddress = "127.0.0.1:{port}"\n'
        f'[relay]\naddress = "{relay[0]}:{relay[1]}"\n' + extra
    )


@contextmanager
def serving(conf: Path, log: Path, port: int) -> Iterator[Server]:
    """Start ``mailgate serve --config conf`` and wait for the master's ``started``."""
    server = Server(conf, log, port)
    with log.open("wb") as out:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("MAILGATE_WORKERS", None)
        server.proc = subprocess.Popen(
            [MAILGATE, "serve", "--config", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            server.master_event("started", timeout=60)
            yield server
        finally:
            if server.proc.poll() is None:
                server.proc.send_signal(signal.SIGTERM)
                try:
                    server.proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    server.proc.kill()
                    server.proc.wait()


def scrape(port: int) -> str:
    """GET /metrics from 127.0.0.1:`port`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
    return text


def connect(port: int) -> socket.socket:
    """A raw connection to 127.0.0.1:`port`."""
    return socket.create_connection(("127.0.0.1", port), timeout=15)


__all__ = ["Server", "connect", "free_port", "scrape", "serving", "write_config"]


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` has open."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def server_side_inode(client: socket.socket) -> int:
    """The inode of the accepted socket at the other end of TCP connection `client`."""
    local_host, local_port = client.getsockname()[:2]
    remote_host, remote_port = client.getpeername()[:2]
    wanted_local = f"{_hex_address(remote_host, remote_port)}"
    wanted_remote = f"{_hex_address(local_host, local_port)}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted_local and fields[2] == wanted_remote:
            return int(fields[9])
    raise AssertionError(f"no server side for {local_host}:{local_port}")


def _hex_address(host: str, port: int) -> str:
    packed = socket.inet_aton(host)
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"
