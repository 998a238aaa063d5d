"""mailgate: a plugin-oriented SMTP filtering host.

The import package `mailgate` is the host: the plugin contract (`mailgate.hookspecs`), the
records a plugin sees (`Session`, `Transaction`, `Message`), the answers it gives (`Verdict`)
and the changes it may make (`mailgate.modifications`).
"""

from mailgate.message import Header, Message
from mailgate.modifications import Modification
from mailgate.plugin import hookimpl
from mailgate.session import Address, Session, Transaction
from mailgate.verdict import Verdict, VerdictKind

__all__ = [
    "Address",
    "Header",
    "Message",
    "Modification",
    "Session",
    "Transaction",
    "Verdict",
    "VerdictKind",
    "hookimpl",
]
__version__ = "0.1.0"
