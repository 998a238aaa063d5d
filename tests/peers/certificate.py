"""A self-signed TLS certificate for STARTTLS tests: mailgate's SMTP listener, Postfix's smtpd."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.peers.workdir import PeerDirs


def self_signed_certificate(
    directory: Path, common_name: str = "mx.mailgate.test"
) -> tuple[str, str]:
    """Write ``cert.pem`` and ``key.pem`` (RSA 2048, valid one day) into ``directory`` with
    openssl; return their paths. The key is readable by root only, as openssl writes it."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={common_name}", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


@pytest.fixture(scope="session")
def certificate(peer_dirs: PeerDirs) -> tuple[str, str]:
    """(cert, key) paths of a self-signed certificate for ``mx.mailgate.test``."""
    return self_signed_certificate(peer_dirs.new("tls"))


def named_certificate(directory: Path, name: str) -> tuple[str, str]:
    """Write ``cert.pem`` and ``key.pem`` into ``directory``: self-signed for `name`, with `name`
    as its subjectAltName too (hostname checks read only that), usable as its own CA file."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)
