"""``mailgate dkim keygen``: write a new signing key and print the DNS record to publish."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mailgate.plugins.dkim.keys import generate, zone_line


def add_commands(parser: argparse.ArgumentParser) -> None:
    """The ``dkim`` command's subcommands (the CLI wires ``mailgate dkim`` to this)."""
    sub = parser.add_subparsers(dest="dkim_command", required=True, metavar="COMMAND")
    keygen = sub.add_parser(
        "keygen",
        help="write a new DKIM key and print its DNS TXT record",
        description="Write a new DKIM private key (mode 0600) and print the TXT record to "
        "publish at SELECTOR._domainkey.DOMAIN.",
    )
    keygen.add_argument("--domain", "-d", required=True, help="the signing domain (d=)")
    keygen.add_argument("--selector", "-s", required=True, help="the selector (s=)")
    keygen.add_argument(
        "--algorithm", "-a", choices=("rsa", "ed25519"), default="rsa", help="default: rsa"
    )
    keygen.add_argument(
        "--bits", type=int, default=2048, help="RSA key size (default 2048, at least 1024)"
    )
    keygen.add_argument(
        "--output",
        "-o",
        type=Path,
        metavar="FILE",
        help="where to write the key (default: ./DOMAIN.SELECTOR.key); never overwritten",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``mailgate dkim ...``; returns the exit status."""
    domain = args.domain.lower().rstrip(".")
    path = args.output or Path(f"{domain}.{args.selector}.key")
    try:
        key = generate(args.algorithm, args.bits)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"mailgate: {path} exists; not overwritten", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"mailgate: {exc}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "wb") as out:
        out.write(key.pem)
    size = f"{args.bits} bits" if args.algorithm == "rsa" else "256 bits"
    print(f"; DKIM key for {domain}, selector {args.selector} ({args.algorithm}, {size}),")
    print(f"; private key in {path}. Publish this record:")
    print(zone_line(domain, args.selector, key.record))
    return 0
