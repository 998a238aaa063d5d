"""The Sender Rewriting Scheme: SRS senders for forwarded mail, bounces to them reversed.

Enable with ``conf.d/75-srs.toml``; see ``docs/plugins/srs.md``.
"""

from mailgate.plugins.srs.codec import SrsCodec, SrsError, is_srs
from mailgate.plugins.srs.plugin import Srs
from mailgate.plugins.srs.settings import SrsSettings

__all__ = ["Srs", "SrsCodec", "SrsError", "SrsSettings", "is_srs"]
