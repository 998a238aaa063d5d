"""Relay egress: the before-queue proxy's SMTP client to the downstream MTA.

`RelaySettings` is the ``[relay]`` table; `RelayEgress` implements `mailgate.egress.Egress`.
"""

from mailgate.relay.egress import RelayEgress, RelayTransaction
from mailgate.relay.settings import RelaySettings

__all__ = ["RelayEgress", "RelaySettings", "RelayTransaction"]
