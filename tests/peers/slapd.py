"""A throwaway OpenLDAP slapd on loopback: its own slapd.conf and mdb database, started by PID.

The directory is ``dc=example,dc=org`` with people under ``ou=people`` (``inetOrgPerson``:
``uid``, ``mail``, ``userPassword`` as ``{SSHA}``) and mail aliases under ``ou=aliases``
(``nisMailAlias`` + ``inetLocalMailRecipient``: ``mailLocalAddress`` expands to the
``rfc822MailMember`` values). The data is loaded with slapadd before slapd starts; slapd runs
in the foreground as ``openldap`` with ``-d stats`` (``-d 0`` hides start-up errors), and is
ready when an anonymous base search names the suffix. Stopped with SIGTERM by its PID.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.peers.ports import free_port
from tests.peers.process import Daemon, Peer, as_user, make_dir, start_daemon
from tests.peers.workdir import PeerDirs

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
LDAPSEARCH = "/usr/bin/ldapsearch"
SUFFIX = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "adminpw"


def ssha(password: str) -> str:
    """``{SSHA}`` of `password` with a random salt (what ``slappasswd`` prints)."""
    salt = os.urandom(4)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


@dataclass(frozen=True)
class Person:
    """One ``inetOrgPerson`` under ``ou=people``."""

    uid: str
    password: str
    mail: str
    aliases: tuple[str, ...] = ()
    """More addresses of this person (``mailLocalAddress``, needs ``inetLocalMailRecipient``)."""

    @property
    def dn(self) -> str:
        """``uid=UID,ou=people,dc=example,dc=org``."""
        return f"uid={self.uid},ou=people,{SUFFIX}"


@dataclass(frozen=True)
class MailAlias:
    """One list/alias under ``ou=aliases``: ``address`` expands to ``members``."""

    name: str
    address: str
    members: tuple[str, ...]


PEOPLE = (
    Person("alice", "alicepw", "alice@example.org", ("sales@example.org",)),
    Person("bob", "bobpw", "bob@example.org"),
)
ALIASES = (
    MailAlias("postmaster", "postmaster@example.org", ("alice@example.org", "bob@example.org")),
)


@dataclass
class Directory:
    """What the test directory holds."""

    people: tuple[Person, ...] = PEOPLE
    aliases: tuple[MailAlias, ...] = ALIASES
    extra_ldif: list[str] = field(default_factory=list)

    def ldif(self) -> str:
        """The whole LDIF loaded with slapadd."""
        blocks = [
            f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n"
            "o: Example Org\n",
            f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
            f"dn: ou=aliases,{SUFFIX}\nobjectClass: organizationalUnit\nou: aliases\n",
        ]
        for p in self.people:
            lines = [f"dn: {p.dn}", "objectClass: inetOrgPerson"]
            if p.aliases:
                lines.append("objectClass: inetLocalMailRecipient")
            lines += [f"uid: {p.uid}", f"cn: {p.uid}", "sn: Example", f"mail: {p.mail}"]
            lines += [f"mailLocalAddress: {a}" for a in p.aliases]
            lines.append(f"userPassword: {ssha(p.password)}")
            blocks.append("\n".join(lines) + "\n")
        for a in self.aliases:
            lines = [
                f"dn: cn={a.name},ou=aliases,{SUFFIX}",
                "objectClass: nisMailAlias",
                "objectClass: inetLocalMailRecipient",
                f"cn: {a.name}",
                f"mailLocalAddress: {a.address}",
            ]
            lines += [f"rfc822MailMember: {m}" for m in a.members]
            blocks.append("\n".join(lines) + "\n")
        blocks += self.extra_ldif
        return "\n".join(blocks)


class Slapd(Peer):
    """A running slapd on ``host``:``port`` serving `Directory` under ``dc=example,dc=org``."""

    suffix = SUFFIX
    admin_dn = ADMIN_DN
    admin_password = ADMIN_PASSWORD

    def __init__(self, workdir: Path, directory: Directory | None = None) -> None:
        self.workdir = make_dir(workdir, owner="openldap")
        self.data = self.workdir / "data"
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.directory = directory or Directory()
        self.daemon: Daemon | None = None
        self._loaded = False

    @property
    def url(self) -> str:
        """``ldap://127.0.0.1:PORT/``."""
        return f"ldap://{self.host}:{self.port}/"

    def config(self) -> str:
        """The whole slapd.conf."""
        schemas = ("core", "cosine", "inetorgperson", "nis", "misc")
        includes = "".join(f"include /etc/ldap/schema/{s}.schema\n" for s in schemas)
        return (
            f"{includes}\n"
            f"pidfile {self.workdir}/slapd.pid\n"
            f"argsfile {self.workdir}/slapd.args\n"
            "modulepath /usr/lib/ldap\n"
            "moduleload back_mdb\n\n"
            "database mdb\n"
            f'suffix "{SUFFIX}"\n'
            f'rootdn "{ADMIN_DN}"\n'
            f"rootpw {ssha(ADMIN_PASSWORD)}\n"
            f"directory {self.data}\n"
            "maxsize 10485760\n"
            "dbnosync\n"
            "index objectClass eq\n"
            "index mail,mailLocalAddress,uid,cn eq\n\n"
            "access to attrs=userPassword\n    by self write\n    by anonymous auth\n"
            "    by * none\n"
            "access to *\n    by * read\n"
        )

    def _load(self) -> None:
        conf = self.workdir / "slapd.conf"
        conf.write_text(self.config())
        ldif = self.workdir / "data.ldif"
        ldif.write_text(self.directory.ldif())
        self.data.mkdir(exist_ok=True)
        shutil.chown(self.workdir, "openldap", "openldap")
        for path in (conf, ldif, self.data):
            shutil.chown(path, "openldap", "openldap")
        argv = [SLAPADD, "-q", "-f", str(conf), "-l", str(ldif)]
        done = subprocess.run(
            as_user(argv, "openldap"), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"slapadd failed:\n{done.stdout}{done.stderr}")
        self._loaded = True

    def start(self) -> Slapd:
        """Write the configuration, load the data (the first time), start slapd on the same
        port; return once a base search answers."""
        if not self._loaded:
            self._load()
        argv = [SLAPD, "-d", "stats", "-h", self.url, "-f", str(self.workdir / "slapd.conf")]
        self.daemon = start_daemon(
            "slapd",
            argv,
            workdir=self.workdir,
            user="openldap",
            group="openldap",
            probe=self._ready,
            timeout=15.0,
            grace=3.0,
        )
        return self

    def _ready(self) -> bool:
        out = self.search("", "(objectClass=*)", "namingContexts", scope="base")
        return f"namingContexts: {SUFFIX}" in out

    def search(self, base: str, search_filter: str, *attrs: str, scope: str = "sub") -> str:
        """ldapsearch (anonymous, simple bind); its LDIF output, or "" when it failed."""
        argv = [LDAPSEARCH, "-x", "-LLL", "-H", self.url, "-s", scope, "-b", base, search_filter]
        done = subprocess.run(
            [*argv, *attrs], capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout if done.returncode == 0 else ""

    def log(self) -> str:
        """What slapd printed so far (``-d stats``: every connection and operation)."""
        return self.daemon.output.read_text(errors="replace") if self.daemon else ""


@pytest.fixture(scope="module")
def slapd(peer_dirs: PeerDirs) -> Iterator[Slapd]:
    """A slapd with the default `Directory`, shared by a module's tests (they only read it)."""
    server = Slapd(peer_dirs.new("slapd")).start()
    yield server
    server.stop()


@pytest.fixture
def own_slapd(peer_dirs: PeerDirs) -> Iterator[Slapd]:
    """A slapd for one test, which may stop it (a dead directory) and start it again."""
    server = Slapd(peer_dirs.new("slapd")).start()
    yield server
    server.stop()
