"""Which ESMTP parameters of MAIL and RCPT may be passed on to the downstream."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

_MAIL_PARAMS = {
    "SIZE": "size",
    "BODY": "8bitmime",
    "SMTPUTF8": "smtputf8",
    "RET": "dsn",
    "ENVID": "dsn",
    "REQUIRETLS": "requiretls",
    "MT-PRIORITY": "mt-priority",
}
_RCPT_PARAMS = {"NOTIFY": "dsn", "ORCPT": "dsn"}


def mail_params(params: Iterable[str], extensions: Mapping[str, str]) -> list[str]:
    """The MAIL FROM parameters the downstream advertises support for, in the given order.

    Others (``AUTH=``, unknown ones) are dropped rather than sent to a server that would
    refuse the whole command. ``BODY=BINARYMIME`` needs BINARYMIME (and therefore BDAT).
    """
    out = []
    for param in params:
        keyword, _, value = param.partition("=")
        key = keyword.upper()
        if key == "BODY" and value.upper() == "BINARYMIME":
            if "binarymime" in extensions and "chunking" in extensions:
                out.append(param)
        elif _MAIL_PARAMS.get(key, "") in extensions:
            out.append(param)
    return out


def rcpt_params(params: Iterable[str], extensions: Mapping[str, str]) -> list[str]:
    """The RCPT TO parameters the downstream advertises support for."""
    return [p for p in params if _RCPT_PARAMS.get(p.partition("=")[0].upper(), "") in extensions]


def with_size(params: list[str], size: int) -> list[str]:
    """`params` with ``SIZE=`` set to the real size of the message about to be sent."""
    return [*(p for p in params if p.partition("=")[0].upper() != "SIZE"), f"SIZE={size}"]
