"""A small pymilter milter, the reference filter side, run as a subprocess by the tests.

``python -m tests.milter.pymilter_peer SOCKET`` (``inet:PORT@127.0.0.1`` or ``unix:/path``).
For a sender ``<refuse@...>`` it answers the end of message with 550 5.7.1 via setreply;
otherwise it makes one of every modification and accepts.
"""

from __future__ import annotations

import sys

import Milter

CONTINUE: int = Milter.CONTINUE
ACCEPT: int = Milter.ACCEPT
REJECT: int = Milter.REJECT


class Peer(Milter.Base):  # type: ignore[misc]
    """Records what it was given and answers with every action at the end of message."""

    def __init__(self) -> None:
        self.sender = ""
        self.subject = ""
        self.received = b""

    def envfrom(self, sender: str, *params: str) -> int:
        """Remember the sender."""
        self.sender = sender
        self.received = b""
        return CONTINUE

    def header(self, name: str, value: str) -> int:
        """Remember the subject."""
        if name.lower() == "subject":
            self.subject = value
        return CONTINUE

    def body(self, chunk: bytes) -> int:
        """Collect the body."""
        self.received += chunk
        return CONTINUE

    def eom(self) -> int:
        """Answer with a reply code or every modification."""
        if self.sender.startswith("<refuse@"):
            self.setreply("550", "5.7.1", "refused by peer")
            return REJECT
        self.addheader("X-Seen", f"{self.getsymval('i')} {self.getsymval('{client_addr}')}")
        self.addheader("X-Subject", self.subject)
        self.addheader("X-Body-Len", str(len(self.received)))
        self.addheader("X-Top", "first", 0)
        self.chgheader("Subject", 1, "changed")
        self.chgheader("X-Drop", 1, "")
        self.addrcpt("<new@example.com>")
        self.addrcpt("<par@example.com>", "NOTIFY=NEVER")
        self.delrcpt("<bob@example.com>")
        self.chgfrom("<sender2@example.com>", "SIZE=10")
        self.replacebody(b"new body\r\n")
        self.quarantine("held by peer")
        return ACCEPT


def main() -> None:
    """Run the peer on the socket given as the first argument."""
    Milter.factory = Peer
    Milter.set_flags(
        Milter.ADDHDRS
        | Milter.CHGHDRS
        | Milter.CHGBODY
        | Milter.ADDRCPT
        | Milter.ADDRCPT_PAR
        | Milter.DELRCPT
        | Milter.CHGFROM
        | Milter.QUARANTINE
    )
    Milter.runmilter("pymilter-peer", sys.argv[1], 30)


if __name__ == "__main__":
    main()
