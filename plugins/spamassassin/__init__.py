"""SpamAssassin: score every message with spamd at the end of data.

Enable with ``conf.d/60-spamassassin.toml``; see ``docs/plugins/spamassassin.md``.
"""

from mailgate.plugins.spamassassin.plugin import SpamassassinPlugin
from mailgate.plugins.spamassassin.settings import SpamassassinSettings
from mailgate.plugins.spamassassin.spamd_client import (
    SpamdClient,
    SpamdError,
    SpamReport,
)

__all__ = [
    "SpamReport",
    "SpamassassinPlugin",
    "SpamassassinSettings",
    "SpamdClient",
    "SpamdError",
]
