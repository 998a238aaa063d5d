"""`ReportSigner`: DKIM-signs report mail with the dkim plugin's keys.

Report mail is queued directly, not run through the plugin chain, so the dkim plugin never
sees it. When the dkim plugin is enabled beside reports, the plugin hands its settings here
and report mail is signed as dkim would sign it: with every key of the sender's domain (or
of its nearest parent domain that has keys), the same header list, oversigning and
canonicalization.
"""

from __future__ import annotations

from mailgate.message import parse_header_block
from mailgate.plugins.dkim import DkimSettings
from mailgate.plugins.dkim.sign import header_list, sign_message


class ReportSigner:
    """Signs with the keys of a `DkimSettings`."""

    def __init__(self, settings: DkimSettings) -> None:
        self.settings = settings

    def sign(self, content: bytes, sender_domain: str) -> bytes:
        """`content` with DKIM-Signature fields on top; unchanged when there is no key."""
        domain, keys = self.settings.keys_for(sender_domain)
        if not keys:
            return content
        headers = parse_header_block(content[: content.index(b"\r\n\r\n") + 2])
        settings = self.settings
        names = header_list((h.name for h in headers), settings.headers, settings.oversign)
        header_canon, _, body_canon = settings.canonicalization.partition("/")
        values = sign_message(content, domain, keys, names, (header_canon, body_canon))
        fields = b"".join(f"DKIM-Signature: {v}\r\n".encode("ascii") for v in values)
        return fields + content
