"""mailgate's kit for plugin authors: run a plugin, or a whole ``conf.d``, through the real
pipeline from a test, and an SMTP sink to deliver into.

Installed with mailgate as a pytest plugin (entry point ``pytest11``), so a plugin's own tests
get the fixtures with no import:

- ``mailgate_conf``: a `ConfDir` in a temporary directory, to write ``mailgate.toml`` and
  plugin files into (``mailgate_conf.plugin("subject_tag", tag="[X]")``);
- ``mailgate_try``: runs one message through that configuration with the code
  ``mailgate try`` uses (every stage, in SMTP order, nothing relayed) and returns a `Result`
  to assert on: the outcome and reply, each plugin's verdicts and changes, the final
  envelope and message;
- ``mailgate_sink``: an SMTP server on loopback that keeps what it receives (`Sink`);
- ``mailgate_server``: ``mailgate serve`` as a real process on the `ConfDir`, relaying into
  a sink, for end-to-end tests with ``smtplib``.

Outside pytest the same pieces are plain functions and classes: `run_message` (async),
`make_session`, `make_transaction`, `make_message` for calling a hook directly.
"""

from mailgate.testing.builders import make_message, make_session, make_transaction
from mailgate.testing.confdir import ConfDir
from mailgate.testing.result import Result, run_message
from mailgate.testing.server import Server
from mailgate.testing.sink import Sink, SinkMessage

__all__ = [
    "ConfDir",
    "Result",
    "Server",
    "Sink",
    "SinkMessage",
    "make_message",
    "make_session",
    "make_transaction",
    "run_message",
]
