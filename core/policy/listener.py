"""The policy listener: accepts Postfix's ``check_policy_service`` connections (TCP or unix)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mailgate.pipeline import Pipeline
from mailgate.policy.connection import PolicyConnection
from mailgate.policy.settings import PolicyListenerSettings
from mailgate.socket_listener import SocketListener


class PolicyListener(SocketListener):
    """Serves policy connections; each SMTP session gets the pipeline current at its start.

    `pipeline` is called at every new SMTP session, not once per connection: Postfix keeps a
    policy connection for many sessions (up to ``smtpd_policy_service_max_ttl``, 1000 s by
    default), and a configuration reload should reach the next session.
    """

    kind = "policy"

    def __init__(
        self, settings: PolicyListenerSettings, *, pipeline: Callable[[], Pipeline]
    ) -> None:
        super().__init__(settings.socket_address, settings.name, settings.socket_mode)
        self.settings = settings
        self.pipeline = pipeline
        self.connections = 0
        """Connections accepted so far (Postfix keeps each for many SMTP sessions)."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One Postfix connection: policy requests until it closes."""
        self.connections += 1
        await PolicyConnection(reader, writer, self.settings, self.pipeline).run()
