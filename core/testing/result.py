"""`run_message` and its `Result`: one message through the real chain, as ``mailgate try``
runs it, with what a test wants to assert on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from mailgate.loader import Config, load_config
from mailgate.message import Message
from mailgate.modifications import Modification
from mailgate.pipeline import CallStatus, HookCall
from mailgate.session import PluginResult
from mailgate.trial import Client, Trial, run_trial
from mailgate.trial.inputs import Envelope, as_crlf, check_client, check_envelope
from mailgate.verdict import Verdict


async def run_message(
    config: Config | str | PathLike[str],
    message: bytes | str,
    *,
    sender: str = "alice@example.com",
    recipients: Iterable[str] = ("bob@example.org",),
    client: str = "127.0.0.1",
    helo: str = "client.example",
    auth: str = "",
    tls: bool = False,
    ingress: str = "smtp",
) -> Result:
    """Run `message` through `config` (a `Config`, or a configuration directory) from the
    pretend client, through every stage, as ``mailgate try`` does; nothing is relayed.

    LF line ends become CRLF. The envelope is checked as the listener would check it (a
    malformed address raises `mailgate.trial.UsageError`).
    """
    if not isinstance(config, Config):
        config = load_config(Path(config))
    raw = message.encode() if isinstance(message, str) else message
    raw = as_crlf(raw)
    envelope = Envelope(sender, list(recipients))
    check_envelope(envelope)
    if ingress not in ("smtp", "milter"):
        raise ValueError(f"ingress: 'smtp' or 'milter', not {ingress!r}")
    pretend = Client(check_client(client), helo, auth, tls, ingress)  # type: ignore[arg-type]
    return Result(await run_trial(config, pretend, envelope, raw))


@dataclass(frozen=True, slots=True)
class Result:
    """What became of one message (`trial` holds every detail; the properties are shortcuts)."""

    trial: Trial

    @property
    def outcome(self) -> str:
        """``accepted``, ``discarded``, ``quarantined``, ``rejected``, ``tempfailed`` or
        ``disconnected``."""
        return self.trial.outcome

    @property
    def accepted(self) -> bool:
        """True when the client would get a 2xx at the end (relayed, held or discarded)."""
        return self.trial.reply.code < 400

    @property
    def reply(self) -> str:
        """The final reply as the client would read it: ``550 5.7.1 Recipient refused``."""
        return self.trial.reply.smtp_reply().replace("\r\n", " / ")

    @property
    def code(self) -> int:
        return self.trial.reply.code

    @property
    def stage(self) -> str:
        """The stage whose answer ended the run (``message`` for an accepted one)."""
        return self.trial.decided_at

    @property
    def message(self) -> Message | None:
        """The message as the plugins left it (None when the run ended before the data)."""
        return self.trial.message

    def header(self, name: str) -> str | None:
        """The first `name` header of the message as it would be delivered, unfolded."""
        message = self.message
        return message.get(name) if message is not None else None

    @property
    def sender(self) -> str:
        """The envelope sender as it would leave (after the plugins' changes)."""
        tx = self.trial.transaction
        return tx.sender.address if tx is not None else self.trial.envelope.sender

    @property
    def recipients(self) -> list[str]:
        """The recipients as they would leave: refused ones out, added ones in."""
        tx = self.trial.transaction
        return [r.address for r in tx.recipients] if tx is not None else []

    @property
    def refused(self) -> dict[str, str]:
        """Recipients refused at RCPT, with the reply each got."""
        return dict(self.trial.refused)

    @property
    def results(self) -> dict[str, PluginResult]:
        """``transaction.results``: what each plugin recorded with ``set_result``."""
        tx = self.trial.transaction
        return dict(tx.results) if tx is not None else {}

    def calls(self, plugin: str | None = None, hook: str | None = None) -> list[HookCall]:
        """Every plugin call, in order; only `plugin`'s, only `hook`'s when given."""
        return [
            call
            for stage in self.trial.stages
            for call in stage.calls
            if (plugin is None or call.plugin == plugin) and (hook is None or call.hook == hook)
        ]

    def verdicts(self, plugin: str) -> list[Verdict]:
        """The verdicts `plugin` gave, in order (None answers left out)."""
        return [c.result for c in self.calls(plugin) if isinstance(c.result, Verdict)]

    def changes(self, plugin: str) -> list[Modification]:
        """The changes `plugin` made, in order."""
        return [m for c in self.calls(plugin) for m in c.modifications]

    def failures(self) -> list[HookCall]:
        """Calls that raised or timed out (the plugin's ``on_error`` applied)."""
        return [c for c in self.calls() if c.status is CallStatus.FAILED]

    def as_bytes(self) -> bytes:
        """The message as it would be delivered (headers as changed, then the body)."""
        message = self.message
        return b"".join(message.iter_bytes()) if message is not None else b""
