"""`QuarantineSettings`: the ``[quarantine]`` table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(slots=True)
class QuarantineSettings:
    """Where held messages go and how long they are kept."""

    backend: Literal["store", "directory"] = "store"
    """``store``: a row per message in ``[store]`` (listed, shown and released with
    ``mailgate quarantine``); ``directory``: ``.eml``/``.json`` files in
    ``relay.quarantine_dir``."""

    retention_days: float = 30.0
    """Days a held message is kept (released or not) before it is deleted; 0 keeps it until
    ``mailgate quarantine delete``. Store backend only."""

    expire_interval: float = 3600.0
    """Seconds between two sweeps for expired messages in a running node."""

    def __post_init__(self) -> None:
        if self.retention_days < 0:
            raise ValueError("retention_days: 0 (keep) or a positive number of days")
        if self.expire_interval <= 0:
            raise ValueError("expire_interval: a positive number of seconds")
