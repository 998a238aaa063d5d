"""A pymilter milter that exercises every action, run as a subprocess by the bridge tests.

``python -m tests.plugins.milter.action_milter SOCKET TAG VERSION`` (VERSION 2 or 6). TAG goes
into the names of the headers it adds, so a chain of two can be told apart. What it does is
chosen by the message:

- sender ``mail-reject@...``: REJECT at MAIL; ``mail-tempfail@...``: TEMPFAIL at MAIL
- recipient ``rcpt-reject@...``: 550 5.1.1 (setreply) at RCPT, for that recipient
- recipients the MTA refused (it asks for them, SMFIP_RCPT_REJ, when offered) are listed,
  with their ``{rcpt_host}`` and ``{rcpt_addr}``, in an ``X-TAG-Refused`` header
- Subject ``reply``: 554 5.7.1 (setreply) at end of message; ``mlreply``: the same as a
  two-line reply (setmlreply); ``discard``, ``tempfail``:
  those replies; ``quarantine``: a quarantine action; ``slow``: no answer for 5 s;
  ``progress``: PROGRESS every 0.4 s for 1.2 s, then accept
- unknown SMTP commands (SMFIC_UNKNOWN, asked for unless TAG ends in ``-nounknown``):
  ``XREJECT ...`` gets 550 5.5.1 naming the command and TAG, anything else CONTINUE
- Subject ``big N``: one ``X-TAG-Big`` header of N bytes, then ACCEPT
- otherwise every action its protocol version has, then ACCEPT.
"""

from __future__ import annotations

import sys
import time

import Milter

TAG = "A"
VERSION = 6


@Milter.rejected_recipients
class ActionMilter(Milter.Base):  # type: ignore[misc]
    """Records the envelope and headers; answers at each step as the message asks."""

    def __init__(self) -> None:
        self.sender = ""
        self.subject = ""
        self.body_len = 0
        self.rcpts: list[str] = []
        self.refused: list[str] = []
        self.connect_macro = ""

    def negotiate(self, opts: list[int]) -> int:
        """Ask for leading spaces and a macro list (pymilter's own setsymlist fails on
        Python 3: it passes bytes where libmilter's binding wants str)."""
        self._actions, offered, _, _ = opts
        if self._actions & Milter.SETSYMLIST:
            self._ctx.setsymlist(Milter.M_ENVFROM, "i {mail_addr} {client_addr} {auth_authen}")
        wanted = offered & ~self.protocol_mask() | (offered & Milter.P_HDR_LEADSPC)
        if TAG.endswith("-nounknown"):
            wanted |= offered & Milter.P_NOUNKNOWN
        opts[1] = self._protocol = wanted
        opts[2] = opts[3] = 0
        return Milter.CONTINUE

    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        """Remember a connect-stage macro."""
        self.connect_macro = f"{self.getsymval('j')}|{self.getsymval('{daemon_name}')}"
        return Milter.CONTINUE

    def envfrom(self, sender: str, *params: str) -> int:
        """Refuse some senders."""
        self.sender = sender
        self.rcpts = []
        self.refused = []
        self.subject = ""
        self.body_len = 0
        self.mail_macros = "|".join(
            str(self.getsymval(m)) for m in ("i", "{mail_addr}", "{client_addr}", "{auth_authen}")
        )
        if sender.startswith("<mail-reject@"):
            return Milter.REJECT
        if sender.startswith("<mail-tempfail@"):
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    def envrcpt(self, recipient: str, *params: str) -> int:
        """Refuse some recipients; note the ones the MTA refused."""
        if self.getsymval("{rcpt_mailer}") == "error":
            host, addr = self.getsymval("{rcpt_host}"), self.getsymval("{rcpt_addr}")
            self.refused.append(f"{recipient} {host} {addr}")
            return Milter.CONTINUE
        if recipient.startswith("<rcpt-reject@"):
            self.setreply("550", "5.1.1", "no such user here")
            return Milter.REJECT
        self.rcpts.append(recipient + "".join(" " + p for p in params))
        return Milter.CONTINUE

    def unknown(self, command: str) -> int:
        """Refuse ``XREJECT`` commands, naming them."""
        if command.upper().startswith("XREJECT"):
            self.setreply("550", "5.5.1", f"{TAG} refuses {command}")
            return Milter.REJECT
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        """Remember the subject."""
        if name.lower() == "subject":
            self.subject = value.strip()
        return Milter.CONTINUE

    def body(self, chunk: bytes) -> int:
        """Count the body."""
        self.body_len += len(chunk)
        return Milter.CONTINUE

    def eom(self) -> int:
        """Answer as the subject asks."""
        subject = self.subject
        if subject == "reply":
            self.setreply("554", "5.7.1", "milter says no")
            return Milter.REJECT
        if subject == "mlreply":
            self.setreply("554", "5.7.1", "milter says no", "on two lines")
            return Milter.REJECT
        if subject == "discard":
            return Milter.DISCARD
        if subject == "tempfail":
            return Milter.TEMPFAIL
        if subject == "slow":
            time.sleep(5)
            return Milter.ACCEPT
        if subject == "progress":
            for _ in range(3):
                time.sleep(0.4)
                self.progress()
            return Milter.ACCEPT
        if subject.startswith("big "):
            self.addheader(f"X-{TAG}-Big", "x" * int(subject.split()[1]))
            return Milter.ACCEPT
        if subject == "quarantine":
            self.quarantine("held by test milter")
            return Milter.ACCEPT
        self.every_action()
        return Milter.ACCEPT

    def every_action(self) -> None:
        """One of each action this protocol version has."""
        t = TAG
        self.addheader(f"X-{t}-Subject", self.subject)
        self.addheader(f"X-{t}-Body-Len", str(self.body_len))
        self.addheader(f"X-{t}-Rcpts", ",".join(self.rcpts))
        if self.refused:
            self.addheader(f"X-{t}-Refused", ",".join(self.refused))
        self.addheader(f"X-{t}-Connect", self.connect_macro)
        self.addheader(f"X-{t}-Mail", self.mail_macros)
        self.addheader(f"X-{t}-Folded", "first line\n\tsecond line")
        self.addheader(f"X-{t}-Top", "inserted", 0)
        self.chgheader("Subject", 1, f"changed by {t}")
        self.chgheader("X-Drop", 1, "")
        self.addrcpt("<added@example.com>")
        self.delrcpt("<removed@example.com>")
        self.replacebody(f"body replaced by {t}\r\n".encode())
        if VERSION >= 6:
            self.addrcpt("<par@example.com>", "NOTIFY=NEVER")
            self.chgfrom("<changed@example.com>", "SIZE=100")


def main() -> None:
    """Run on the socket given as the first argument."""
    global TAG, VERSION
    TAG, VERSION = sys.argv[2], int(sys.argv[3])
    flags = (
        Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.ADDRCPT | Milter.DELRCPT
    ) | Milter.QUARANTINE
    if VERSION >= 6:
        flags |= Milter.ADDRCPT_PAR | Milter.CHGFROM | Milter.SETSYMLIST
    Milter.factory = ActionMilter
    Milter.set_flags(flags)
    Milter.runmilter("action-milter", sys.argv[1], 30)


if __name__ == "__main__":
    main()
