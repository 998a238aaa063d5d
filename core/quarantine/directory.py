"""`QuarantineStore`: the quarantine as a directory of files (``[quarantine] backend =
"directory"``), the way mailgate held messages before the store.

Each message is one ``<id>.eml`` file (the message as it would have been relayed, headers as
changed by plugins) and one ``<id>.json`` sidecar with the envelope and why it was held. Both
are written to a temporary name, flushed to disk and renamed, and the sidecar comes last: a
``.json`` file means its ``.eml`` is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mailgate.session import Session, Transaction


@dataclass(frozen=True, slots=True)
class QuarantinedMessage:
    """Where one held message was stored."""

    id: str
    message_path: Path
    sidecar_path: Path


class QuarantineStore:
    """A directory of held messages; created on first use."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    async def store(
        self, session: Session, transaction: Transaction, reason: str, plugin: str = ""
    ) -> QuarantinedMessage:
        """Write the message and its sidecar without blocking the event loop.

        Raises OSError if the directory cannot be written; the caller answers 4xx then.
        """
        return await asyncio.to_thread(self._store, session, transaction, reason, plugin)

    def _store(
        self, session: Session, transaction: Transaction, reason: str, plugin: str
    ) -> QuarantinedMessage:
        if transaction.message is None:
            raise ValueError("quarantine needs the message (end of data)")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        qid = f"{time.strftime('%Y%m%dT%H%M%S')}-{transaction.id}"
        eml = self.directory / f"{qid}.eml"
        sidecar = self.directory / f"{qid}.json"
        with _atomic(eml) as f:
            for chunk in transaction.message.iter_bytes():
                f.write(chunk)
        with _atomic(sidecar) as f:
            described = _describe(session, transaction, reason, plugin)
            f.write(json.dumps(described, indent=1).encode())
        return QuarantinedMessage(qid, eml, sidecar)

    def entries(self) -> list[dict[str, Any]]:
        """The sidecars of every complete held message, oldest first."""
        if not self.directory.is_dir():
            return []
        paths = sorted(self.directory.glob("*.json"))
        return [json.loads(p.read_text()) for p in paths]


def _describe(
    session: Session, transaction: Transaction, reason: str, plugin: str
) -> dict[str, Any]:
    message = transaction.message
    return {
        "reason": reason,
        "plugin": plugin,
        "time": time.time(),
        "session": session.id,
        "transaction": transaction.id,
        "client_ip": session.client_ip,
        "client_name": session.client_name,
        "helo": session.helo,
        "auth_login": session.auth_login,
        "listener": session.listener,
        "sender": transaction.sender.address,
        "sender_params": transaction.sender.params,
        "recipients": [{"address": r.address, "params": r.params} for r in transaction.recipients],
        "size": message.size if message is not None else 0,
        "results": {k: v.result for k, v in transaction.results.items()},
    }


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[BinaryIO]:
    """A binary file written under a temporary name and renamed into place when complete."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        # Private to mailgate's user: a held message is somebody's mail.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
