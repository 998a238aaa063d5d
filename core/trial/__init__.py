"""``mailgate try``: run one message through the configured plugin chain, offline, and report.

The message goes through the same stages, in the same order and under the same rules as on the
SMTP listener (or, with ``--ingress milter``, the milter listener): connect, HELO, MAIL, one
RCPT per recipient (a refused recipient is not added), DATA, end of headers, end of data, then
``on_outcome`` and ``on_disconnect``. A refusal at any stage ends the run, as the client would
see it. The plugins are the real ones, so clamd, spamd and external milters are contacted; only
the downstream is not: an accepted message is reported as "would relay to ...".

Every plugin call is recorded through the pipeline's observers (`mailgate.pipeline.HookCall`):
called, skipped (its ``when`` was false) or failed (and the ``on_error`` policy that applied),
its answer, its changes and its time.
"""

from mailgate.trial.inputs import (
    EXIT_ACCEPTED,
    EXIT_CONFIG,
    EXIT_REJECT,
    EXIT_TEMPFAIL,
    EXIT_USAGE,
    LISTENER_NAME,
    Client,
    Envelope,
    UsageError,
    check_client,
    envelope,
    read_message,
)
from mailgate.trial.report import json_document, text_lines
from mailgate.trial.run import Stage, Trial, run_trial, write_message

__all__ = [
    "EXIT_ACCEPTED",
    "EXIT_CONFIG",
    "EXIT_REJECT",
    "EXIT_TEMPFAIL",
    "EXIT_USAGE",
    "LISTENER_NAME",
    "Client",
    "Envelope",
    "Stage",
    "Trial",
    "UsageError",
    "check_client",
    "envelope",
    "json_document",
    "read_message",
    "run_trial",
    "text_lines",
    "write_message",
]
