"""Runs one SMTP listener relaying to HOST:PORT in its own process, for memory measurements.

``python -m tests.smtp.listener_process HOST:PORT QUARANTINE_DIR`` prints the listener's port
on the first line of stdout, then serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import sys

import structlog

from mailgate.config import Dynamic
from mailgate.pipeline import Pipeline
from mailgate.relay import RelayEgress, RelaySettings
from mailgate.smtp.listener import SmtpListener
from mailgate.smtp.settings import SmtpListenerSettings
from tests import event_loops


async def main(relay: str, quarantine_dir: str) -> None:
    egress = RelayEgress(
        RelaySettings(
            address=Dynamic.fixed(relay), helo_name="mailgate.test", quarantine_dir=quarantine_dir
        )
    )
    pipeline = Pipeline([])
    listener = SmtpListener(
        SmtpListenerSettings(address="127.0.0.1:0", hostname="mx.mailgate.test"),
        pipeline=lambda: pipeline,
        egress=egress,
    )
    await listener.start()
    print(listener.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await listener.stop()
    await egress.close()


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    with asyncio.Runner(loop_factory=event_loops.new_loop) as runner:
        runner.run(main(sys.argv[1], sys.argv[2]))
