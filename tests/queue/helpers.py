"""A mailgate node with a queue: its configuration, SMTP clients, and what its store holds."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from mailgate.store import Store, StoreSettings
from mailgate.store.schema import messages, recipients
from tests.peers.ports import free_port


def toml_value(value: object) -> str:
    """A Python value as TOML (strings, numbers, booleans, lists and inline tables of them)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def write_config(
    directory: Path,
    store_url: str,
    next_hop: str,
    *,
    listen: str = "127.0.0.1:0",
    queue: Mapping[str, object] | None = None,
    store: Mapping[str, object] | None = None,
    log_file: Path | None = None,
) -> Path:
    """``mailgate.toml`` for a node whose SMTP listener queues into `store_url` and whose
    worker delivers to `next_hop`; the retry times are short, for tests."""
    directory.mkdir(parents=True, exist_ok=True)
    queue_table = {"next_hop": next_hop, "min_backoff": 0.5, "max_backoff": 2.0, **(queue or {})}
    store_table = {"url": store_url, **(store or {})}
    lines = ["[store]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in store_table.items()]
    lines += ["[queue]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in queue_table.items()]
    lines += ["[relay]", "connect_timeout = 2.0", "command_timeout = 10.0", 'starttls = "never"']
    lines += ["[[listener]]", f'address = "{listen}"', 'egress = "queue"', "egress_timeout = 20.0"]
    if log_file is not None:
        lines += ["[logging]", f'file = "{log_file}"']
    (directory / "mailgate.toml").write_text("\n".join(lines) + "\n")
    return directory


def message(message_id: str, subject: str = "queued") -> bytes:
    """A small message with a Message-ID to count it by at the sink."""
    return (
        f"From: a@example.net\r\nTo: b@example.org\r\nSubject: {subject}\r\n"
        f"Message-ID: <{message_id}>\r\n\r\nhello\r\n.a line with a leading dot\r\n"
    ).encode()


def send(
    port: int, rcpts: list[str], data: bytes, sender: str = "a@example.net"
) -> tuple[int, str]:
    """One message through mailgate's SMTP listener; the end-of-data reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example.net")
        client.mail(sender)
        for rcpt in rcpts:
            code, _ = client.rcpt(rcpt)
            assert code == 250, (rcpt, code)
        code, text = client.data(data)
        return code, text.decode()


async def store_rows(url: str) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Every message (without content) and recipient row in the store at `url`."""
    store = Store(StoreSettings(url=url))
    await store.open()
    try:
        async with store.engine.connect() as conn:
            columns = [c for c in messages.c if c.name != "content"]
            msgs = [dict(r._mapping) for r in await conn.execute(select(*columns))]
            rcpts = [dict(r._mapping) for r in await conn.execute(select(recipients))]
    finally:
        await store.close()
    return msgs, rcpts


@dataclass
class Node:
    """``mailgate serve`` in its own process, on a fixed port, logging to a file."""

    config: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def configure(cls, directory: Path, store_url: str, next_hop: str, **queue: object) -> Node:
        """A node (not started) for `store_url` delivering to `next_hop`."""
        port = free_port()
        log_file = directory / "mailgate.log"
        config = write_config(
            directory,
            store_url,
            next_hop,
            listen=f"127.0.0.1:{port}",
            queue=queue,
            log_file=log_file,
        )
        return cls(config, port)

    @property
    def log(self) -> str:
        """What the node logged so far."""
        path = self.config / "mailgate.log"
        return path.read_text() if path.exists() else ""

    def start(self, timeout: float = 20.0) -> Node:
        """Start it and wait until its listener answers."""
        mailgate = Path(sys.executable).parent / "mailgate"
        self.proc = subprocess.Popen(
            [str(mailgate), "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.config / "stderr", "ab"),  # noqa: SIM115 - the child keeps it
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"220"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mailgate did not start:\n{self.log[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """``kill -9``: no shutdown of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait (the clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


class Load:
    """`count` messages sent by `sessions` threads, each its own SMTP session; remembers the
    Message-IDs that got a 250. A thread stops at its first failure (the node died)."""

    def __init__(self, port: int, count: int, sessions: int, prefix: str) -> None:
        self.port = port
        self.ids = [f"{prefix}-{i}@load.test" for i in range(count)]
        self.accepted: list[str] = []
        self.failed: list[str] = []
        self._lock = threading.Lock()
        self._next = 0
        self._threads = [threading.Thread(target=self._session) for _ in range(sessions)]

    def start(self) -> Load:
        """Start every session."""
        for thread in self._threads:
            thread.start()
        return self

    def join(self) -> None:
        """Wait for every session to end."""
        for thread in self._threads:
            thread.join(timeout=120)

    def _take(self) -> str | None:
        with self._lock:
            if self._next >= len(self.ids):
                return None
            self._next += 1
            return self.ids[self._next - 1]

    def _session(self) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as client:
                client.ehlo("load.example.net")
                while (message_id := self._take()) is not None:
                    try:
                        client.sendmail("a@example.net", ["b@example.org"], message(message_id))
                    except smtplib.SMTPResponseException as exc:
                        with self._lock:
                            self.failed.append(f"{message_id}: {exc.smtp_code}")
                        continue
                    with self._lock:
                        self.accepted.append(message_id)
        except (OSError, smtplib.SMTPException):
            return
