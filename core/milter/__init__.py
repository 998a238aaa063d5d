"""The milter protocol: one codec for both directions, and the milter listener.

`mailgate.milter.codec` holds the frames, `encode` and `FrameDecoder`; the listener (mailgate
as a milter for Postfix) and the bundled milter bridge plugin (mailgate as the MTA side for
external milters) are both built on it.
"""

from mailgate.milter.listener import MilterListener
from mailgate.milter.settings import MilterListenerSettings

__all__ = ["MilterListener", "MilterListenerSettings"]
