"""DKIM (RFC 6376): verify every signature of incoming mail, sign outgoing mail.

dkimpy does the cryptography, in a thread; key lookups go to the core ``[dns]`` name servers.
Enable with ``conf.d/85-dkim.toml``; see ``docs/plugins/dkim.md``.
"""

from mailgate.plugins.dkim.plugin import RESULT_KEY, SIGNED_NOTE, Dkim
from mailgate.plugins.dkim.settings import DkimKeySettings, DkimSettings

__all__ = ["RESULT_KEY", "SIGNED_NOTE", "Dkim", "DkimKeySettings", "DkimSettings"]
