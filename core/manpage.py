"""The ``mailgate(1)`` man page, written from the command line's own parser.

``python -m mailgate.manpage > mailgate.1`` (``make man``). Every command, option and help
text comes from `mailgate.cli`'s argparse definitions, so the page cannot drift from what the
command accepts.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Iterator

from mailgate import __version__

SEE_ALSO = "postfix(1), postconf(5), smtpd(8), opendkim(8), opendmarc(8)"
DESCRIPTION = (
    "mailgate is a plugin-oriented SMTP filtering host. It fronts an MTA as an SMTP proxy "
    "(or stores and forwards through its own queue), as a milter (Postfix smtpd_milters) or "
    "as a policy server, and runs each message through the plugins enabled by the files of "
    "its configuration directory."
)
FILES = [
    ("./conf.d/, /etc/mailgate/", "where a command without --config looks, in that order"),
    ("DIR/mailgate.toml", "the core tables: listeners, relay, queue, store, logging, metrics"),
    ("DIR/NN-name.toml", "one enabled plugin each, run in file-name order"),
]


def render(parser: argparse.ArgumentParser, today: datetime.date | None = None) -> str:
    """The man page for `parser` (the ``mailgate`` parser and its subcommands), as roff."""
    date = (today or datetime.date.today()).isoformat()
    lines = [
        f'.TH MAILGATE 1 "{date}" "mailgate {__version__}" "User Commands"',
        ".SH NAME",
        r"mailgate \- " + _escape(parser.description or "").rstrip("."),
        ".SH SYNOPSIS",
        r".B mailgate",
        r"\fICOMMAND\fR [\fIOPTIONS\fR]",
        ".SH DESCRIPTION",
        _escape(DESCRIPTION),
        ".SH COMMANDS",
    ]
    for name, sub in _subcommands(parser):
        lines += _command(name, sub)
    lines += [".SH FILES"]
    for path, what in FILES:
        lines += [".TP", rf"\fI{_escape(path)}\fR", _escape(what)]
    lines += [
        ".SH EXIT STATUS",
        "0 on success, 1 for a configuration error or a failure, 2 for a usage error; "
        r"\fBtry\fR also exits 4 (tempfail) and 5 (reject).",
        ".SH SEE ALSO",
        _escape(SEE_ALSO),
    ]
    return "\n".join(lines) + "\n"


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)command as ``"dkim keygen"``, with its parser, depth first, in order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                nested = list(_subcommands(sub))
                if nested:
                    for sub_name, sub_parser in nested:
                        yield f"{name} {sub_name}", sub_parser
                else:
                    sub.description = sub.description or helps.get(name)
                    yield name, sub


def _command(name: str, parser: argparse.ArgumentParser) -> list[str]:
    usage = parser.format_usage().removeprefix("usage: ").strip()
    usage = " ".join(usage.split())
    lines = [
        ".SS " + _escape(name),
        ".nf",
        _escape(usage),
        ".fi",
        _escape(parser.description or ""),
    ]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        lines += [".TP", _option(action), _escape(_help(action))]
    return lines


def _option(action: argparse.Action) -> str:
    if not action.option_strings:
        return rf"\fI{_escape(str(action.metavar or action.dest)).upper()}\fR"
    names = ", ".join(rf"\fB{_escape(o)}\fR" for o in action.option_strings)
    if action.nargs == 0:
        return names
    if action.choices is not None:
        value = "|".join(str(c) for c in action.choices)
    else:
        value = str(action.metavar or action.dest.upper())
    return rf"{names} \fI{_escape(value)}\fR"


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(default)" in text:
        text = text % {"default": action.default}
    return text


def _escape(text: str) -> str:
    """Text safe in roff: backslashes doubled, hyphens as minus signs where options need them,
    and a leading dot or quote kept from being read as a request."""
    text = text.replace("\\", r"\e").replace("-", r"\-")
    return "\n".join(r"\&" + line if line[:1] in (".", "'") else line for line in text.split("\n"))


def main() -> int:
    """Write the page to standard output."""
    from mailgate.cli import parser

    sys.stdout.write(render(parser()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
