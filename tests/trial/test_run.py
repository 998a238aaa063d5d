"""`TrialRun` in process: ``mailgate try`` runs the listeners' own flow (`SessionFlow`)."""

from __future__ import annotations

from mailgate import Address, Verdict, hookimpl
from mailgate.config import Dynamic
from mailgate.pipeline import EnabledPlugin, Pipeline
from mailgate.smtp.settings import SmtpListenerSettings
from mailgate.trial.inputs import Client, Envelope, Limits
from mailgate.trial.run import Trial, TrialRun

RAW = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


class RefusesSpam:
    """Refuses spam@ at RCPT and records what the flow reports back."""

    def __init__(self) -> None:
        self.refused: list[tuple[str, int]] = []
        self.outcomes: list[str] = []

    @hookimpl
    def on_rcpt(self, recipient: Address) -> Verdict | None:
        if recipient.local_part == "spam":
            return Verdict.reject(550, "5.7.1", "Go away", reason="listed")
        return None

    @hookimpl
    def on_rcpt_refused(self, recipient: Address, verdict: Verdict) -> None:
        self.refused.append((recipient.address, verdict.code))

    @hookimpl
    def on_outcome(self, verdict: Verdict) -> None:
        self.outcomes.append(verdict.kind.value)


def trial(rcpts: list[str], max_recipients: int = 1000) -> Trial:
    listener = SmtpListenerSettings(max_recipients=Dynamic.fixed(max_recipients))
    limits = Limits("mx.test", listener, "127.0.0.1:25", "/nonexistent")
    return Trial(Client(), Envelope("a@example.com", rcpts), limits)


async def test_a_refused_recipient_goes_to_on_rcpt_refused_as_on_the_listeners() -> None:
    plugin = RefusesSpam()
    t = trial(["spam@example.net", "ok@example.net"])
    result = await TrialRun(Pipeline([EnabledPlugin("refuser", plugin)]), t, RAW).run()
    assert plugin.refused == [("spam@example.net", 550)]
    assert result.outcome == "accepted" and plugin.outcomes == ["accept"]
    refused_stage = next(s for s in result.stages if s.name == "rcpt")
    assert [c.hook for c in refused_stage.calls] == ["on_rcpt", "on_rcpt_refused"]


async def test_the_listeners_recipient_limit_and_all_refused_outcome() -> None:
    t = trial(["a@example.net", "b@example.net"], max_recipients=1)
    result = await TrialRun(Pipeline([EnabledPlugin("refuser", RefusesSpam())]), t, RAW).run()
    assert result.outcome == "accepted"
    assert [(a, r[:3]) for a, r in result.refused] == [("b@example.net", "452")]
    t = trial(["spam@example.net"])
    result = await TrialRun(Pipeline([EnabledPlugin("refuser", RefusesSpam())]), t, RAW).run()
    assert (result.outcome, result.reply.code) == ("rejected", 550)
    assert [s.name for s in result.stages][-2:] == ["outcome", "disconnect"]
    assert result.message is None  # the run ended before the data
