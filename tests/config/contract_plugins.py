"""Small plugin classes that break the plugin contract, one mistake each, and one that keeps it.

`install_contract_plugins` registers them as a real installed distribution (a ``.dist-info``
with an ``entry_points.txt``, as pip leaves it), so the loader finds them by entry point in
this process and in a ``mailgate`` subprocess alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mailgate import Address, Session, Verdict, hookimpl


class MisspelledHook:
    """``on_recipient`` instead of ``on_rcpt``."""

    @hookimpl
    def on_recipient(self, recipient: Address) -> None:
        """Never called: mailgate has no such hook."""


class UnknownArgument:
    """``rcpt`` instead of ``recipient``."""

    @hookimpl
    def on_rcpt(self, rcpt: Address) -> None:
        """Would be given nothing called ``rcpt``."""


class Wrapper:
    """A pluggy new-style wrapper, which mailgate's dispatcher does not run."""

    @hookimpl(wrapper=True)
    def on_rcpt(self, recipient: Address) -> Iterator[None]:
        """Would be called once and never resumed."""
        yield


class HookWrapper:
    """A pluggy old-style wrapper."""

    @hookimpl(hookwrapper=True)
    def on_mail(self, sender: Address) -> Iterator[None]:
        """Would be called once and never resumed."""
        yield


class WrongAnswer:
    """Keeps the contract at load time; answers a string at RCPT."""

    @hookimpl
    def on_rcpt(self, recipient: Address) -> str:
        """The wrong type of answer (a reply text instead of a `Verdict`)."""
        return "550 no"


class Good:
    """Keeps the contract."""

    @hookimpl
    def on_helo(self, session: Session, name: str) -> Verdict | None:
        """Refuses one HELO name."""
        return Verdict.reject(550, "5.7.1", "Go away") if name == "bad" else None


def _looks_like_a_hook(rcpt: Address) -> None:
    """A hook implementation with an argument no hook offers."""


class Sneaky:
    """A class that keeps the contract, whose instances add a hook the class did not have."""

    def __init__(self) -> None:
        self.on_rcpt = hookimpl(_looks_like_a_hook)


PLUGINS = {
    "misspelled_hook": MisspelledHook,
    "unknown_argument": UnknownArgument,
    "wrapper": Wrapper,
    "hookwrapper": HookWrapper,
    "wrong_answer": WrongAnswer,
    "good_contract": Good,
    "sneaky": Sneaky,
}
DISTRIBUTION = "mailgate_test_contract_plugins"


def install_contract_plugins(site: Path) -> Path:
    """Write a ``.dist-info`` registering every class above into `site` (a sys.path entry)."""
    info = site / f"{DISTRIBUTION}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: 0.1\n")
    lines = [f"{name} = {__name__}:{cls.__name__}" for name, cls in PLUGINS.items()]
    (info / "entry_points.txt").write_text("[mailgate.plugins]\n" + "\n".join(lines) + "\n")
    return site
