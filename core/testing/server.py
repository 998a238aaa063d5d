"""`Server`: ``mailgate serve`` as a real process on a test's configuration directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """``mailgate serve --config DIR --listen 127.0.0.1:PORT --relay RELAY`` in the background.

    `start` returns once the listener answers; `stop` sends SIGTERM and waits. Its log (JSON
    lines) is in `log_path`, and `log()` reads it.
    """

    def __init__(self, config: str | os.PathLike[str], relay: str, *, log_path: Path) -> None:
        self.config = Path(config)
        self.relay = relay
        self.log_path = log_path
        self.host = "127.0.0.1"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Server:
        self.port = free_port()
        command = [
            sys.executable, "-m", "mailgate.cli", "serve", "--config", str(self.config),
            "--listen", f"{self.host}:{self.port}", "--relay", self.relay,
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mailgate serve exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"mailgate serve did not listen in {timeout}s:\n{self.log()}"
                    ) from exc
                time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log(self) -> str:
        """What the server wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
