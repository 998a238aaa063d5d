"""A private Postfix instance on loopback: the downstream MTA and a milter client for tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from pathlib import Path

import pytest

from tests.peers.ports import free_port
from tests.peers.process import Daemon, Peer, banner_probe, make_dir, start_daemon
from tests.peers.smtp_sink import SmtpSink
from tests.peers.workdir import PeerDirs

MASTER = "/usr/lib/postfix/sbin/master"

# Test hooks built into every instance, so error paths need no extra configuration:
RECIPIENT_ACCESS = (
    "/^reject[^@]*@/ 550 5.1.1 Recipient rejected by test rule\n"
    "/^tempfail[^@]*@/ 450 4.2.1 Recipient deferred by test rule\n"
)
SENDER_ACCESS = (
    "/^reject[^@]*@/ 553 5.7.1 Sender rejected by test rule\n"
    "/^tempfail[^@]*@/ 451 4.7.1 Sender deferred by test rule\n"
)
HEADER_CHECKS = (
    "/^X-Test-Reject:/ REJECT Message rejected by test header\n"
    "/^X-Test-Hold:/ HOLD held by test header\n"
    "/^X-Test-Discard:/ DISCARD discarded by test header\n"
)

QUEUE_DIRS = (
    "active",
    "bounce",
    "corrupt",
    "defer",
    "deferred",
    "flush",
    "hold",
    "incoming",
    "private",
    "saved",
    "trace",
)

SERVICES = """\
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""

# smtpd seeds TLS from tlsmgr: without it, "no entropy for TLS key generation" and STARTTLS 454.
TLS_SERVICES = "tlsmgr unix - - n 1000? 1 tlsmgr\n"

SASL_USER_REALM = "pf.test"
"""The realm of `Postfix.enable_sasl` users (``smtpd_sasl_local_domain``): they log in as
``name``, and Postfix (its log, ``{auth_authen}`` for milters) calls them ``name@pf.test``."""


@dataclass(frozen=True, slots=True)
class Listener:
    """An extra smtpd listener, typically with milters (``inet:HOST:PORT`` or ``unix:PATH``)."""

    port: int
    milters: tuple[str, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)  # extra ``-o name=value``
    host: str = ""  # the instance's host when empty; "::1" for an IPv6 listener

    def master_cf_line(self, host: str) -> str:
        """This listener's line in master.cf (``[::1]:PORT`` for an IPv6 host)."""
        opts = dict(self.options)
        if self.milters:
            opts["smtpd_milters"] = ", ".join(self.milters)
        args = "".join(f" -o {{ {name} = {value} }}" for name, value in opts.items())
        return f"{_bracketed(self.host or host)}:{self.port} inet n - n - - smtpd{args}\n"


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """A message in Postfix's queue (from ``postqueue -j``)."""

    queue_id: str
    queue_name: str  # "incoming", "active", "deferred" or "hold"
    sender: str
    recipients: tuple[str, ...]
    reasons: tuple[str, ...]  # delay reason per recipient ("" when none yet)
    size: int

    @property
    def held(self) -> bool:
        """True when the message sits in the hold queue (``postqueue -p`` shows ``!``)."""
        return self.queue_name == "hold"


@dataclass(frozen=True, slots=True)
class DeliveredMessage:
    """A message that Postfix delivered to the ``local.test`` Maildir."""

    path: Path
    data: bytes  # as stored: LF line ends, with Delivered-To and Return-Path prepended

    @property
    def message(self) -> Message:
        """The message parsed with the standard library."""
        return BytesParser().parsebytes(self.data)

    @property
    def delivered_to(self) -> str:
        """The recipient Postfix delivered this copy for."""
        return str(self.message.get("Delivered-To", ""))


class Postfix(Peer):
    """A private Postfix instance: own config, queue and logs in ``workdir``; master runs as root.

    Mail to ``@local.test`` lands in a Maildir (``delivered()``); everything else goes to
    ``relayhost`` (or stays deferred in the queue when there is none). Built-in test rules:
    recipients or senders whose local part starts with ``reject``/``tempfail`` get 5xx/4xx, and
    headers ``X-Test-Reject:``, ``X-Test-Hold:``, ``X-Test-Discard:`` trigger those actions.
    """

    def __init__(
        self,
        workdir: Path,
        relayhost: tuple[str, int] | None = None,
        main_cf: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.relayhost = relayhost
        self.extra_main_cf = dict(main_cf or {})
        self.port = free_port(host)
        self.listeners: list[Listener] = []
        self.etc = make_dir(workdir / "etc")
        self.spool = make_dir(workdir / "spool")
        make_dir(workdir / "data", owner="postfix")
        self.vmail = make_dir(workdir / "vmail", owner="nobody:nogroup")
        self.maillog_path = workdir / "maillog"
        self.daemon: Daemon | None = None
        self.tls: tuple[str, str] | None = None
        self.sasl_dir: Path | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the plain smtpd listener (no milters)."""
        return (self.host, self.port)

    def main_cf(self) -> dict[str, str]:
        """The main.cf parameters this instance runs with."""
        d = self.workdir
        params = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.spool),
            "data_directory": f"{d}/data",
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": str(d),
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "myhostname": "mx.pf.test",
            "mydomain": "pf.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": f"check_recipient_access regexp:{self.etc}/rcpt_access",
            "smtpd_sender_restrictions": f"check_sender_access regexp:{self.etc}/sender_access",
            "header_checks": f"regexp:{self.etc}/header_checks",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "smtpd_authorized_xforward_hosts": "127.0.0.0/8",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "virtual_mailbox_domains": "local.test",
            "virtual_mailbox_base": str(self.vmail),
            "virtual_mailbox_maps": "static:catchall/",
            "virtual_uid_maps": "static:65534",
            "virtual_gid_maps": "static:65534",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "5s",
            "maximal_queue_lifetime": "1h",
            "bounce_queue_lifetime": "1h",
            "milter_protocol": "6",
            "milter_default_action": "tempfail",
            "milter_connect_timeout": "5s",
            "milter_command_timeout": "10s",
            "milter_content_timeout": "30s",
        }
        if self.relayhost is not None:
            params["relayhost"] = f"[{self.relayhost[0]}]:{self.relayhost[1]}"
        else:
            params["default_transport"] = "retry:no relayhost in this test"
        if self.tls is not None:
            params["smtpd_tls_cert_file"], params["smtpd_tls_key_file"] = self.tls
            params["smtpd_tls_security_level"] = "may"
        if self.sasl_dir is not None:
            params["smtpd_sasl_auth_enable"] = "yes"
            params["smtpd_sasl_type"] = "cyrus"
            params["smtpd_sasl_path"] = "smtpd"
            params["cyrus_sasl_config_path"] = str(self.sasl_dir)
            params["smtpd_sasl_local_domain"] = SASL_USER_REALM
        params.update(self.extra_main_cf)
        return params

    def enable_tls(self, cert: str, key: str) -> None:
        """Offer STARTTLS on every smtpd with this certificate and key (call before
        ``start()``); ``certificate`` from tests.peers.certificate fits."""
        self.tls = (cert, key)

    def enable_sasl(self, users: Mapping[str, str]) -> None:
        """Offer AUTH PLAIN and LOGIN on every smtpd (Cyrus SASL, call before ``start()``),
        for ``users`` (name: password) in a private sasldb, in realm `SASL_USER_REALM`."""
        # Debian's smtpd reads $config_directory/sasl/smtpd.conf whatever cyrus_sasl_config_path
        # says (its patch puts a Cyrus GETCONFPATH callback first); upstream's uses the latter.
        self.sasl_dir = make_dir(self.etc / "sasl")
        db = self.sasl_dir / "sasldb2"
        (self.sasl_dir / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n"
            f"sasldb_path: {db}\n"
        )
        for name, password in users.items():
            subprocess.run(
                ["saslpasswd2", "-p", "-c", "-f", str(db), "-u", SASL_USER_REALM, name],
                input=password.encode(),
                check=True,
                capture_output=True,
            )
        # smtpd opens the sasldb at AUTH time, after it has dropped to the postfix user.
        shutil.chown(db, "root", "postfix")
        db.chmod(0o640)

    def add_listener(
        self,
        milters: Sequence[str] = (),
        *,
        protocol: int | None = None,
        default_action: str | None = None,
        options: Mapping[str, str] | None = None,
        host: str | None = None,
    ) -> int:
        """Add an smtpd listener with ``milters``; returns its port. Works before ``start()``,
        and after it too (Postfix reloads and the port is open when this returns).

        ``host="::1"`` listens on IPv6 loopback; the instance then needs ``main_cf``
        ``inet_protocols = all`` (which a milter at ``inet:[::1]:PORT`` needs too)."""
        opts = dict(options or {})
        if protocol is not None:
            opts["milter_protocol"] = str(protocol)
        if default_action is not None:
            opts["milter_default_action"] = default_action
        host = host or self.host
        listener = Listener(_free_port(host), tuple(milters), opts, host)
        self.listeners.append(listener)
        if self.daemon is not None:
            self._write_config()
            self.reload()
            _wait(banner_probe(host, listener.port), 10.0, f"listener {listener.port}")
        return listener.port

    def _write_config(self) -> None:
        main = "".join(f"{name} = {value}\n" for name, value in self.main_cf().items())
        (self.etc / "main.cf").write_text(main)
        master = f"{self.host}:{self.port} inet n - n - - smtpd\n"
        master += "".join(listener.master_cf_line(self.host) for listener in self.listeners)
        services = SERVICES + (TLS_SERVICES if self.tls is not None else "")
        (self.etc / "master.cf").write_text(master + services)
        (self.etc / "rcpt_access").write_text(RECIPIENT_ACCESS)
        (self.etc / "sender_access").write_text(SENDER_ACCESS)
        (self.etc / "header_checks").write_text(HEADER_CHECKS)
        # Postfix sleeps until main.cf is older than a couple of seconds before it reads it.
        past = time.time() - 10
        for path in self.etc.iterdir():
            os.utime(path, (past, past))

    def start(self) -> Postfix:
        """Write the configuration, create the queue directories and start the master."""
        self._write_config()
        self._create_queue()
        # master -d must lead its own process group, or SIGTERM fails in master_sigdeath.
        self.daemon = start_daemon(
            "postfix-master",
            [MASTER, "-c", str(self.etc), "-d"],
            workdir=self.workdir,
            probe=banner_probe(self.host, self.port),
            logs=[self.maillog_path],
        )
        return self

    def _create_queue(self) -> None:
        # What `postfix check` creates (see /etc/postfix/postfix-files), done directly because
        # `postfix check` spends over two seconds in post-install on a fresh queue.
        for name in QUEUE_DIRS:
            make_dir(self.spool / name, owner="postfix", mode=0o700)
        make_dir(self.spool / "maildrop", owner="postfix:postdrop", mode=0o730)
        make_dir(self.spool / "public", owner="postfix:postdrop", mode=0o710)
        make_dir(self.spool / "pid")

    def reload(self) -> None:
        """Re-read main.cf and master.cf (SIGHUP to the master)."""
        if self.daemon is not None:
            self.daemon.signal(signal.SIGHUP)

    def maillog(self) -> str:
        """Everything Postfix has logged so far."""
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until a maillog line matches the regex ``pattern``; return the match."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while (match := regex.search(self.maillog())) is None:
            if time.monotonic() > deadline:
                tail = "\n".join(self.maillog().splitlines()[-30:])
                raise AssertionError(f"no maillog line matches {pattern!r} in {timeout}s:\n{tail}")
            time.sleep(0.05)
        return match

    def postqueue(self, *args: str) -> str:
        """Run ``postqueue -c <etc> ARGS`` and return its output."""
        cmd = ["postqueue", "-c", str(self.etc), *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

    def queue(self) -> list[QueueEntry]:
        """The messages in the queue now (all of incoming, active, deferred and hold)."""
        entries = []
        for line in self.postqueue("-j").splitlines():
            item = json.loads(line)
            rcpts = item.get("recipients", [])
            entries.append(
                QueueEntry(
                    queue_id=item["queue_id"],
                    queue_name=item["queue_name"],
                    sender=item.get("sender", ""),
                    recipients=tuple(r["address"] for r in rcpts),
                    reasons=tuple(r.get("delay_reason", "") for r in rcpts),
                    size=int(item.get("message_size", 0)),
                )
            )
        return entries

    def flush(self) -> None:
        """Attempt delivery of every deferred message now (``postqueue -f``)."""
        self.postqueue("-f")

    def delivered(self) -> list[DeliveredMessage]:
        """Messages delivered to ``@local.test`` so far, oldest first."""
        maildir = self.vmail / "catchall"
        if not maildir.exists():
            return []
        paths = [p for sub in ("new", "cur") for p in (maildir / sub).glob("*") if p.is_file()]
        paths.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [DeliveredMessage(path, path.read_bytes()) for path in paths]

    def wait_for_delivered(self, count: int = 1, timeout: float = 10.0) -> list[DeliveredMessage]:
        """Wait until at least ``count`` messages are in the ``local.test`` Maildir."""
        deadline = time.monotonic() + timeout
        while len(found := self.delivered()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(found)} message(s) delivered, expected {count}, in {timeout}s\n"
                    + "\n".join(self.maillog().splitlines()[-20:])
                )
            time.sleep(0.05)
        return found


def _bracketed(host: str) -> str:
    """``[::1]`` for an IPv6 literal (master.cf's spelling), any other host as it is."""
    return f"[{host}]" if ":" in host else host


def _free_port(host: str) -> int:
    """`free_port` for an IPv4 or IPv6 host (free_port binds IPv4 only)."""
    if ":" not in host:
        return free_port(host)
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        return port


def _wait(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready after {timeout}s")
        time.sleep(0.05)


PostfixFactory = Callable[..., Postfix]
"""``postfix_factory(relay=None, main_cf=None, start=True) -> Postfix``."""


@pytest.fixture
def postfix_factory(peer_dirs: PeerDirs) -> Iterator[PostfixFactory]:
    """Create private Postfix instances. ``relay`` is an SmtpSink or (host, port); pass
    ``start=False`` to add listeners before starting. All are stopped after the test."""
    instances: list[Postfix] = []

    def factory(
        relay: SmtpSink | tuple[str, int] | None = None,
        main_cf: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> Postfix:
        relayhost = relay.address if isinstance(relay, SmtpSink) else relay
        instance = Postfix(peer_dirs.new("postfix"), relayhost, main_cf)
        instances.append(instance)
        return instance.start() if start else instance

    yield factory
    for instance in instances:
        instance.stop()


@pytest.fixture
def postfix(postfix_factory: PostfixFactory, smtp_sink: SmtpSink) -> Postfix:
    """A started private Postfix that relays everything not ``@local.test`` to ``smtp_sink``."""
    return postfix_factory(relay=smtp_sink)
