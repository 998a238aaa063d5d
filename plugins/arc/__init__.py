"""ARC (RFC 8617): verify the Authenticated Received Chain of incoming mail, say whether its
newest sealer is trusted, and seal the mail chosen by ``seal_when`` as an intermediary.

dkimpy checks and makes the signatures, in a thread; key lookups go to the core ``[dns]`` name
servers. Enable with ``conf.d/87-arc.toml``; see ``docs/plugins/arc.md``.
"""

from mailgate.plugins.arc.plugin import RESULT_KEY, SEALED_NOTE, TRUSTED_NOTE, Arc
from mailgate.plugins.arc.settings import ArcSealSettings, ArcSettings

__all__ = ["RESULT_KEY", "SEALED_NOTE", "TRUSTED_NOTE", "Arc", "ArcSealSettings", "ArcSettings"]
