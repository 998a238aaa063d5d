"""ClamAV antivirus: scan every message with clamd at the end of data.

Enable with ``conf.d/50-clamav.toml``; see ``docs/plugins/clamav.md``.
"""

from mailgate.plugins.clamav.clamd_client import (
    ClamdAddress,
    ClamdClient,
    ClamdError,
    ClamdSizeLimitError,
    ScanResult,
)
from mailgate.plugins.clamav.plugin import ClamavPlugin
from mailgate.plugins.clamav.settings import ClamavSettings

__all__ = [
    "ClamavPlugin",
    "ClamavSettings",
    "ClamdAddress",
    "ClamdClient",
    "ClamdError",
    "ClamdSizeLimitError",
    "ScanResult",
]
