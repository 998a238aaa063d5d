"""The plugin contract: every hook mailgate calls, in SMTP order.

A plugin is a class registered under the entry-point group ``mailgate.plugins``. mailgate makes
one instance per enabled ``conf.d`` file, passing the file's settings::

    class Plugin:
        def __init__(self, settings: mailgate.config.PluginSettings) -> None: ...

        @hookimpl
        async def on_rcpt(self, session, transaction, recipient):
            if recipient.domain == "example.invalid":
                return Verdict.reject(550, "5.1.1", "No such domain")
            return None

Rules every hook follows:

- An implementation may be a plain function or a coroutine function, and may take any subset
  of the arguments in the spec below; mailgate passes only what it asks for.
- Decision hooks return ``None`` (go on) or a :class:`mailgate.Verdict`. Plugins are asked in
  ``conf.d`` order; the first verdict ends the stage. ``Verdict.accept()`` ends it too, with
  the remaining plugins not asked.
- Each call has the plugin's ``timeout``; an exception, a timeout or an answer of the wrong
  type (a decision hook returning something other than ``None`` or a ``Verdict``,
  ``authenticate`` something other than ``None``, True or False) applies the plugin's
  ``on_error`` policy (``tempfail``, ``reject`` or ``accept``) instead of a blanket answer,
  and logs ``plugin failed`` naming the plugin and the hook.
- A plugin whose ``when`` expression is false for this session/transaction is not called
  for the decision hooks; ``on_rcpt_refused``, ``on_outcome`` and ``on_disconnect`` are always
  called, so a plugin can release what it holds.
- Plugins change the message only through :class:`mailgate.Transaction` methods
  (``add_header``, ``delete_recipient``, ...), never by writing to the message directly.
- A hook is never told which way the message came in (SMTP or milter) or will leave.

What a plugin reads of the message is declared by the class attribute ``reads``, a set of
``"headers"`` and ``"body"`` (default: both, so a plugin that says nothing gets everything)::

    class AddHeader:
        reads = frozenset()                 # adds a header, never looks at the message

    class SubjectTag:
        reads = frozenset({"headers"})      # reads and changes the Subject, not the body

It is a fact about the plugin's code, not a setting: ``conf.d`` cannot change it. The milter
listener asks the MTA for the headers only when some plugin with `on_headers` or `on_message`
reads them, and for the body only when some plugin with `on_message` does (sending and
buffering them costs CPU time on both sides, growing with the message's size). A part nobody
reads is then empty for every plugin: see :func:`on_message`. The SMTP listener always has
the whole message, whatever ``reads`` says.

Everything else mailgate reads of a plugin class is in :class:`PluginClass`. It is all checked
when the configuration is loaded (``mailgate check-config``, ``try``, ``serve`` and SIGHUP
alike), and a plugin that breaks it is a configuration error naming the file, the plugin, the
hook and the reason::

    conf.d/20-foo.toml: plugin foo: hook on_recipient: no such hook (did you mean on_rcpt?)
    conf.d/20-foo.toml: plugin foo: hook on_rcpt: unknown argument 'rcpt' (the hook offers
        session, transaction, recipient)
    conf.d/20-foo.toml: plugin foo: hook on_rcpt: hookimpl option wrapper is not supported
"""

from __future__ import annotations

from collections.abc import Set
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from mailgate.directory import Entry, Question
from mailgate.message import Header, Message
from mailgate.plugin import hookspec
from mailgate.session import Address, Session, Transaction
from mailgate.verdict import Verdict

if TYPE_CHECKING:
    from mailgate.dns import DnsSettings

# -------------------------------------------------------------------------------------------
# the plugin class
# -------------------------------------------------------------------------------------------


class PluginClass(Protocol):
    """What mailgate reads of a plugin class, besides its hooks. Every attribute is optional.

    A plugin does not inherit from this; it documents the attributes the loader looks for, each
    with its default when the class leaves it out, and what is a configuration error:

    - ``Settings``: a dataclass whose fields are the keys of the plugin's ``conf.d`` file
      (checked by :func:`mailgate.config.load_settings`). Default: none, and then the file may
      hold only the run options (``enabled``, ``when``, ``timeout``, ``on_error``,
      ``concurrent``). Anything else than a dataclass is an error.
    - ``reads``: the parts of the message its ``on_headers``/``on_message`` read, a set of
      ``"headers"`` and ``"body"`` (see the module docstring). Default: both.
    - ``concurrent``: True for a scanner that may run at the same time as its concurrent
      neighbours at the end of data (see :func:`on_message`); the ``conf.d`` key of the same
      name overrides it. Default: False. Anything else than True or False is an error.
    - ``answers``: a method ``answers(self, hook, ingress) -> bool``, False when the plugin's
      `hook` never gives a verdict for sessions that come in through `ingress` (``"smtp"``,
      ``"milter"``, ``"policy"``), though it is still called. The milter listener then tells
      the MTA not to wait for a reply at that step when no other plugin answers there: a
      round trip less per message. Relay control says so of milter recipients, which Postfix
      has already checked. Default: every hook it implements may answer. A refusal given
      where the plugin said it would not cannot reach the MTA in time: the message is
      tempfailed at its end instead, and the log names the plugin.
    - ``__init__``: called once per enabled ``conf.d`` file (and again on SIGHUP), with the
      ``Settings`` instance as its one positional argument (with no argument when there is no
      ``Settings``). When it has a keyword parameter named ``dns``, it is also given the core
      ``[dns]`` table, a :class:`mailgate.dns.DnsSettings`; give it a default, so the plugin
      can be built by hand in a test. Likewise a keyword parameter named ``store`` is given
      the core ``[store]`` table, a :class:`mailgate.store.StoreSettings` (the database a
      plugin may keep state in, as ``greylist`` does). A ``TypeError`` or ``ValueError`` from
      it is reported as settings the plugin refused.
    - ``start`` and ``stop``: for a plugin with work of its own beside the hooks (a store, a
      periodic job), ``async def start(self, context)`` and ``async def stop(self)``.
      ``mailgate serve`` calls ``start`` with a :class:`mailgate.plugin.PluginContext` (the
      store's settings, the node's name, the metrics registry) before it listens, ``stop``
      at shutdown; after a reload the new instance is started before the old one is
      stopped. ``mailgate try`` and ``check-config`` call neither: hooks must cope with a
      plugin that was not started.
    - hooks: methods marked ``@hookimpl``, named after a hook below (or naming it with
      ``@hookimpl(specname="on_rcpt")``), whose arguments are among the ones the hook offers,
      with no default values and no ``*args``/``**kwargs``. ``@hookimpl(optionalhook=True)``
      lets a plugin implement a hook that this version of mailgate may not have (it is then
      never called). ``wrapper``, ``hookwrapper``, ``tryfirst`` and ``trylast`` are not
      supported: plugins run in ``conf.d`` order, one call each. A method named after a hook
      but not marked ``@hookimpl`` is an error too: it would never be called.

    A plugin switched off with ``enabled = false`` is not checked (a broken upgrade can be
    parked). :func:`mailgate.contract.check_plugin_class` is the check.
    """

    Settings: ClassVar[type[Any] | None]
    reads: ClassVar[Set[str]]
    concurrent: ClassVar[bool]

    def __init__(self, settings: Any = ..., /, *, dns: DnsSettings | None = None) -> None:
        """Build the plugin from its ``conf.d`` settings (and the ``[dns]`` table, if asked)."""

    def answers(self, hook: str, ingress: str) -> bool:
        """False if `hook` never gives a verdict for sessions from `ingress` (see above)."""


# -------------------------------------------------------------------------------------------
# connection
# -------------------------------------------------------------------------------------------


@hookspec
def on_connect(session: Session) -> Verdict | None:
    """A client connected.

    :param session: the new session: ``client_ip``, ``client_port``, ``client_name`` (the
        forward-confirmed reverse name, or ""; ``session.notes["iprev"]`` has the lookup's
        result), ``listener``, ``tls``.

    A reject or tempfail here is the greeting (``554``/``421``) and the client may only QUIT.
    """


@hookspec
def on_helo(session: Session, name: str) -> Verdict | None:
    """The client said HELO or EHLO.

    :param name: the name it gave (also in ``session.helo``).

    A refusal answers the HELO/EHLO; the client may try again.
    """


@hookspec(firstresult=True)
def authenticate(session: Session, mechanism: str, login: str, secret: str) -> bool | None:
    """Check credentials given with AUTH. Stops at the first non-None result.

    :param mechanism: ``PLAIN`` or ``LOGIN``.
    :return: True to accept (``session.auth_login`` is then set), False to refuse, None when
        this plugin has no opinion on this login.

    A plugin that raises or times out ends the check: the client gets ``454 4.7.0`` (try
    again later), never a ``535`` for a password nobody looked at. No later plugin is asked.
    """


@hookspec(firstresult=True)
def directory(session: Session | None, question: Question, subject: str) -> Entry | None:
    """Answer a directory question (docs/directory.md). Stops at the first non-None result.

    Not called by mailgate's stages: plugins that need the directory (recipient verification,
    ``sender_auth``, ``directory_auth``, ``rewrite``) ask it through
    :func:`mailgate.directory.ask`, at any stage.

    :param session: the session asking (None outside one).
    :param question: ``recipient`` (the subject is an address: does it exist, and what does
        it expand to), ``senders`` (a login: the addresses it may send as) or ``credentials``
        (a login: its password hash or the DN to bind as).
    :param subject: the address or the login.
    :return: a :class:`mailgate.directory.Entry` (``found=False`` when the directory knows
        the subject does not exist), or None when this backend has no opinion (a domain it
        does not serve, a question it is not set up for).

    A backend that raises or times out ends the question with its ``on_error``: ``tempfail``
    (the default: the asker answers ``451 4.3.0``), ``reject`` (``554 5.3.0``), or ``accept``
    (passed over, as if it had said None).
    """


# -------------------------------------------------------------------------------------------
# envelope
# -------------------------------------------------------------------------------------------


@hookspec
def on_mail(session: Session, transaction: Transaction, sender: Address) -> Verdict | None:
    """MAIL FROM, at the start of a transaction.

    :param sender: the reverse path and its ESMTP parameters (also ``transaction.sender``);
        an empty ``address`` is the null sender ``<>``.

    A refusal answers MAIL FROM and no transaction starts.
    """


@hookspec
def on_rcpt(session: Session, transaction: Transaction, recipient: Address) -> Verdict | None:
    """RCPT TO, once per recipient.

    :param recipient: this recipient and its ESMTP parameters. It is appended to
        ``transaction.recipients`` only if every plugin lets it through.

    A refusal answers this RCPT only; the transaction goes on with the other recipients.
    """


@hookspec
def on_rcpt_refused(
    session: Session, transaction: Transaction, recipient: Address, verdict: Verdict
) -> None:
    """A recipient was refused at RCPT: by a plugin, by the downstream, or (through the milter
    listener) by the MTA itself.

    :param verdict: the refusal, with the code, enhanced status and text the client got.

    For plugins that count refusals (a milter that asked for rejected recipients,
    ``SMFIP_RCPT_REJ``; harvest detection; rate limits). Plugins that already saw this
    recipient in `on_rcpt` are told too. Always called, whatever a plugin's ``when``; the
    result is ignored and errors are only logged.
    """


@hookspec
def on_unknown(session: Session, transaction: Transaction | None, command: str) -> Verdict | None:
    """The client sent a command mailgate (or, through the milter listener, the MTA) does not
    know. ``transaction`` is the open one, or None.

    :param command: the command line without CRLF; through the milter listener, what the MTA
        passes on (Postfix: the verb only).

    For the milter bridge, which passes it to milters that ask for unknown commands
    (SMFIC_UNKNOWN). A refusal is the reply to that command; otherwise the client gets the
    usual ``500 5.5.1`` (or the MTA's own reply). The command is never carried out, and every
    such reply counts towards the listener's ``max_errors``.
    """


@hookspec
def on_data(session: Session, transaction: Transaction) -> Verdict | None:
    """DATA, before the 354: the recipients are final.

    A refusal answers DATA and no message is read.
    """


# -------------------------------------------------------------------------------------------
# content
# -------------------------------------------------------------------------------------------


@hookspec
def on_headers(session: Session, transaction: Transaction, headers: list[Header]) -> Verdict | None:
    """The header block is complete; the body may not have arrived yet.

    :param headers: the parsed headers, in order. Do not change them here: use the
        transaction's modification methods in :func:`on_message`. Empty on the milter
        listener when no plugin declares it ``reads`` the headers.

    A refusal is given at the end of data (SMTP cannot answer earlier).
    """


@hookspec
def on_message(session: Session, transaction: Transaction, message: Message) -> Verdict | None:
    """The whole message has arrived: scan it, score it, change it.

    :param message: headers and body; the body is spooled to disk past a threshold, so read it
        in chunks (``message.iter_body()``).

    Plugins that declare ``concurrent = True`` (scanners that only read the message) run at the
    same time as their concurrent neighbours in ``conf.d`` order, so a message costs the
    slowest scan, not their sum; their modifications are applied afterwards in ``conf.d``
    order. Every other plugin sees the message as the plugins before it left it.

    **Declare what you read** (class attribute ``reads``, see the module docstring). On the
    milter listener, when no enabled plugin with `on_headers`/`on_message` reads the headers
    (or, for the body, no plugin with `on_message` reads it), the MTA is asked not to send
    them, and every plugin then sees:

    - ``message.headers`` empty (only the headers added by plugins before it), so
      ``message.get(...)`` is None; ``message.withheld`` contains ``"headers"``;
    - an empty body (``message.body_size == 0``, ``iter_body()`` yields nothing);
      ``message.withheld`` contains ``"body"``;
    - ``message.size`` counting only what is there; ``size`` in ``when`` expressions is
      then the client's SIZE parameter (0 if it gave none).

    The envelope, the session and ``transaction.queue_id`` are complete as always. Every
    modification still works, since each is a milter action applied by the MTA to the real
    message: ``add_header``, ``insert_header``, recipients, sender, quarantine, and
    ``replace_body`` (the new body is sent whole). ``change_header`` and ``delete_header``
    act on the real headers too, but a plugin that uses them normally decides from the
    headers, so it must declare ``"headers"``. On the SMTP listener ``message.withheld`` is
    always empty.
    """


# -------------------------------------------------------------------------------------------
# after the decision
# -------------------------------------------------------------------------------------------


@hookspec
def on_outcome(session: Session, transaction: Transaction, verdict: Verdict) -> None:
    """What was finally decided for this transaction, after delivery was attempted.

    :param verdict: accept (delivered or queued), reject, tempfail, discard or quarantine.
    No final reply (RSET, QUIT, EHLO, disconnect, crash; through the milter listener, the
    MTA's ABORT): tempfail, reason ``aborted...``. A sender refused at MAIL FROM opens no
    transaction, so there is no outcome for it.

    For metrics and reports; the result is ignored and errors are only logged.
    """


@hookspec
def on_disconnect(session: Session) -> None:
    """The connection is closed. ``session.counters`` holds its totals. Errors are only logged."""
