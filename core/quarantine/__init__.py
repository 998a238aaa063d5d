"""The quarantine: messages held for an administrator instead of being delivered.

Two backends behind one interface (`Quarantine`): the store (``[quarantine] backend =
"store"``, the default: a row per message in the shared database, `StoredQuarantine`, listed
and released with ``mailgate quarantine``) and a directory of ``.eml``/``.json`` pairs
(``backend = "directory"``, `QuarantineStore`).
"""

from mailgate.quarantine.directory import QuarantinedMessage, QuarantineStore
from mailgate.quarantine.interface import Held, Quarantine
from mailgate.quarantine.settings import QuarantineSettings
from mailgate.quarantine.stored import StoredQuarantine

__all__ = [
    "Held",
    "Quarantine",
    "QuarantineSettings",
    "QuarantineStore",
    "QuarantinedMessage",
    "StoredQuarantine",
]
