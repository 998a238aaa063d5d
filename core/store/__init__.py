"""The store: mailgate's state in one database, SQLite by default, PostgreSQL when shared.

`StoreSettings` is the ``[store]`` table; `Store` opens it (migrating it to the newest schema)
and runs transactions; `GroupCommit` lets concurrent writers share one commit. The tables are
in `mailgate.store.schema`. The queue uses it now; the DMARC reports and the quarantine will.
"""

from mailgate.store.database import Store, like_literal
from mailgate.store.group_commit import GroupCommit, Rows
from mailgate.store.settings import StoreSettings

__all__ = ["GroupCommit", "Rows", "Store", "StoreSettings", "like_literal"]
